"""Vendor SLMs and cameras through slmsuite's hardware classes (``pip install 'satlab[slm]'``).

slmsuite already wraps the vendors' SDKs (Holoeye, Meadowlark, Hamamatsu, Santec,
Thorlabs, Basler, FLIR, Allied Vision, pylablib cameras, …); satlab puts its interfaces
on top instead of binding the SDKs again.
"""
