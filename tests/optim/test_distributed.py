"""2-process gloo DDP run equals a single-process m-sharpness run with one split per replica."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from satlab.optim import SAM, WSAM, m_sharpness_step, sam_ddp_step

STEPS = 3
CE = nn.functional.cross_entropy


def _data():
    g = torch.Generator().manual_seed(5)
    return torch.randn(16, 4, generator=g), torch.arange(16) % 3


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def _opts(model_a, model_b):
    return (SAM(model_a.parameters(), torch.optim.SGD, rho=0.3, lr=0.2, momentum=0.9),
            WSAM(model_b.parameters(), torch.optim.SGD, rho=0.3, gamma=0.8, decoupled=False,
                 lr=0.2))


def _worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    x, y = _data()
    xs, ys = x.tensor_split(world)[rank], y.tensor_split(world)[rank]
    ma, mb = _model(), _model()
    da, db = nn.parallel.DistributedDataParallel(ma), nn.parallel.DistributedDataParallel(mb)
    oa, ob = _opts(ma, mb)
    for _ in range(STEPS):
        sam_ddp_step(da, CE, (xs, ys), oa)
        sam_ddp_step(db, CE, (xs, ys), ob)
    torch.save({"a": ma.state_dict(), "b": mb.state_dict()}, os.path.join(out_dir, f"{rank}.pt"))
    dist.barrier()  # both results are on disk before either process tears gloo down
    dist.destroy_process_group()
    # gloo's threads can still be joinable while the interpreter's C++ destructors run,
    # which aborts the process ("terminate called without an active exception") after
    # its work is done and saved: leave without running them
    os._exit(0)


# Some torch builds (e.g. certain macOS/mobile wheels) ship without torch.distributed; the
# CPU wheel this project installs has it, so the test runs here and in CI.
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_two_process_ddp_equals_single_process_m_sharpness(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    x, y = _data()
    ma, mb = _model(), _model()
    oa, ob = _opts(ma, mb)
    for _ in range(STEPS):
        m_sharpness_step(ma, CE, (x, y), oa, num_batch_splits=2)
        m_sharpness_step(mb, CE, (x, y), ob, num_batch_splits=2)
    r0, r1 = (torch.load(tmp_path / f"{r}.pt") for r in (0, 1))
    for key, ref in (("a", ma.state_dict()), ("b", mb.state_dict())):
        for name, t in ref.items():
            assert torch.equal(r0[key][name], r1[key][name]), "replicas drifted apart"
            assert torch.allclose(r0[key][name], t, atol=1e-6), (key, name)
    assert not torch.allclose(ma[0].weight, _model()[0].weight)  # it did train
