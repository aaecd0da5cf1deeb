"""Device choice and the CUDA-only treatment (bf16 autocast, channels-last, pinned copies, batch size), checked on
the CPU: the CPU's training path must be the identity, its teacher forwards channels-last with the same outputs, and
the CUDA decisions are checked with torch's CUDA queries mocked."""
import contextlib

import numpy as np
import pytest
import torch

from hubscout import device as hdev
from hubscout.extract import extract, extract_group, input_groups
from hubscout.teachers import InputConfig


def test_device_setting(monkeypatch):
    monkeypatch.delenv(hdev.ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert hdev.resolve_device() == torch.device("cpu")  # auto without CUDA
    monkeypatch.setenv(hdev.ENV, "cpu")
    assert hdev.resolve_device() == torch.device("cpu")
    assert hdev.resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setenv(hdev.ENV, "cuda")
    with pytest.raises(ValueError, match="no CUDA device"):
        hdev.resolve_device()
    monkeypatch.setenv(hdev.ENV, "tpu")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        hdev.resolve_device()
    assert hdev.resolve_device("cpu") == torch.device("cpu")  # an explicit device wins over the setting
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv(hdev.ENV, "auto")
    assert hdev.resolve_device() == torch.device("cuda")
    monkeypatch.setenv(hdev.ENV, "cuda:1")
    assert hdev.resolve_device() == torch.device("cuda", 1)


def test_cpu_path_is_the_identity():
    cpu = torch.device("cpu")
    assert hdev.autocast_dtype(cpu) is None
    assert isinstance(hdev.autocast(cpu), contextlib.nullcontext)
    x = torch.randn(2, 3, 8, 8)
    assert hdev.to_device(x, cpu) is x  # no copy, no pinning, same layout
    m = torch.nn.Conv2d(3, 4, 3)
    w = m.weight
    assert hdev.prepare_model(m, cpu) is m and m.weight is w and m.weight.is_contiguous()
    assert hdev.batch_size_for(cpu, (3, 224, 224), 64) == 64


def test_cpu_teacher_forwards_are_channels_last_with_the_same_outputs(quick_repo, footwear_target):
    """Teacher forwards run channels-last on the CPU too (faster there): same outputs as the default layout's up to
    float rounding, for every demo teacher, while a training model keeps its layout (prepare_model)."""
    from hubscout.data import iter_batches
    from hubscout.extract import features_and_logits

    cpu = torch.device("cpu")
    x = torch.randn(2, 3, 8, 8)
    cl = hdev.inference_batch(x, cpu)
    assert cl.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(cl, x)
    flat = torch.randn(4, 5)
    assert hdev.inference_batch(flat, cpu) is flat
    for t in quick_repo.list():
        plain = t.load_model("cpu")
        fast = hdev.prepare_for_inference(t.load_model("cpu"), cpu)
        conv = next(m for m in fast.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last), t.id
        batch = next(iter_batches(footwear_target.images[:6], t.input, 6))
        with torch.inference_mode():
            f0, z0 = features_and_logits(plain, batch)
            f1, z1 = features_and_logits(fast, hdev.inference_batch(batch, cpu))
        np.testing.assert_allclose(z1.numpy(), z0.numpy(), rtol=1e-4, atol=1e-4 * float(z0.abs().max()), err_msg=t.id)
        np.testing.assert_allclose(f1.numpy(), f0.numpy(), rtol=1e-4, atol=1e-4 * float(f0.abs().max()), err_msg=t.id)
        assert z1.argmax(1).tolist() == z0.argmax(1).tolist()
        # Extraction, what a ranking runs, gives those outputs.
        out = extract(t, footwear_target, device="cpu", batch_size=6)
        np.testing.assert_allclose(out.logits[:6], z1.numpy(), rtol=1e-5, atol=1e-5 * float(z1.abs().max()))


def test_cuda_decisions_with_mocked_queries(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert hdev.autocast_dtype(cuda) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert hdev.autocast_dtype(cuda) is None  # older GPUs: full precision rather than fp16 without a scaler
    # Batch size from free memory: 3×224² float inputs × 60 ≈ 36 MB an image; 16 GB free, half of it used.
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d=None: (16 * 2 ** 30, 80 * 2 ** 30))
    assert hdev.batch_size_for(cuda, (3, 224, 224), 64) == 128
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d=None: (200 * 2 ** 30, 200 * 2 ** 30))
    assert hdev.batch_size_for(cuda, (3, 224, 224), 64) == 1024  # capped
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d=None: (2 ** 30, 2 ** 30))
    assert hdev.batch_size_for(cuda, (3, 224, 224), 64) == 64  # never below the configured size


def test_bf16_autocast_keeps_outputs_float32_and_close():
    """What the CUDA path does to a forward, run with CPU autocast: outputs come back as float32 arrays, close to
    full precision (the dtype handling of extract_group does not depend on the device)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(8, 5)).eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.inference_mode():
        full = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(x)
    assert half.dtype == torch.bfloat16
    back = half.float().cpu().numpy()
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, full.numpy(), atol=5e-2, rtol=5e-2)


def test_group_extraction_equals_one_teacher_at_a_time(quick_repo, footwear_target):
    """Teachers sharing an input config see each batch converted once; their outputs are bit for bit those of
    separate passes."""
    small = [t for t in quick_repo.list() if t.input.size <= 64]
    groups = input_groups(small + small[:1], max_group=2)
    assert all(len({t.input for t in g}) == 1 and len(g) <= 2 for g in groups)
    assert sum(len(g) for g in groups) == len(small) + 1
    same = [t for t in small if t.input == small[0].input]
    group = [small[0]] + [t for t in same[1:]][:1] or [small[0]]
    res = extract_group(group, footwear_target, device="cpu", batch_size=7)
    assert len(res.outputs) == len(group) and res.input_s >= 0 and all(f > 0 for f in res.forward_s)
    for t, out in zip(group, res.outputs):
        alone = extract(t, footwear_target, device="cpu", batch_size=7)
        np.testing.assert_array_equal(out.features, alone.features)
        np.testing.assert_array_equal(out.logits, alone.logits)
        assert out.features.dtype == np.float32 and out.features.shape[0] == len(footwear_target)
    with pytest.raises(ValueError, match="input configs differ"):
        other = next(t for t in quick_repo.list() if t.input != small[0].input)
        extract_group([small[0], other], footwear_target, device="cpu")


def test_input_config_is_a_grouping_key():
    a = InputConfig(32, 1, (0.5,), (0.25,))
    assert a == InputConfig(32, 1, (0.5,), (0.25,)) and hash(a) == hash(InputConfig(32, 1, (0.5,), (0.25,)))
