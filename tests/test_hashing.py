"""hopekit.hashing: one digest for checkpoints, data fingerprints and records."""

import hashlib

import torch

from hopekit.hashing import digest


def test_digest_is_sha256_of_dtype_shape_and_bytes():
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    want = hashlib.sha256(b"Ttorch.float32(2, 3)" + t.numpy().tobytes()).hexdigest()
    assert digest(t) == "sha256:" + want


def test_digest_sees_every_difference_and_ignores_key_order():
    a = {"w": torch.ones(3), "step": 4, "losses": [1.0, 2.0]}
    assert digest(a) == digest({"losses": [1.0, 2.0], "step": 4, "w": torch.ones(3)})
    for changed in ({**a, "w": torch.tensor([1.0, 1.0, 1.0 + 2 ** -20])}, {**a, "step": 5},
                    {**a, "w": torch.ones(3, dtype=torch.float64)}, {**a, "w": torch.ones(1, 3)}):
        assert digest(changed) != digest(a)
