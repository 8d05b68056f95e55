"""trainer.mixed_precision=auto: bf16 where the hardware has native bf16, fp32 elsewhere; the run records
what it resolved to."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from moe import precision
from moe.training import run


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "no")])
def test_auto_follows_the_cpu(monkeypatch, no_cuda, native, expected):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    assert precision.resolve_mixed_precision("auto", cpu=False) == expected


@pytest.mark.parametrize("requested", ["no", "fp16"])
def test_explicit_values_pass_through_silently(monkeypatch, no_cuda, requested):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert precision.resolve_mixed_precision(requested, cpu=True) == requested


def test_explicit_bf16_without_native_bf16_warns_but_is_kept(monkeypatch, no_cuda):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="mixed_precision='bf16' on a device without native bf16"):
        assert precision.resolve_mixed_precision("bf16", cpu=True) == "bf16"


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "machine", "features", "expected"),
    [
        (True, False, "x86_64", None, True),
        (False, True, "x86_64", None, True),
        (False, False, "x86_64", "Features\t: fp asimd bf16\n", False),  # the Arm flag means nothing on x86
        (False, False, "aarch64", "Features\t: fp asimd sve bf16 i8mm\n", True),
        (False, False, "aarch64", "Features\t: fp asimd sve svebf16\n", False),  # a different flag, whole words only
        (False, False, "aarch64", None, False),  # no /proc/cpuinfo
    ],
)
def test_cpu_probe(monkeypatch, tmp_path, avx512_bf16, amx, machine, features, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(precision.platform, "machine", lambda: machine)
    cpuinfo = tmp_path / "cpuinfo"
    if features is not None:
        cpuinfo.write_text(f"processor\t: 0\n{features}")
    monkeypatch.setattr(precision, "CPUINFO", cpuinfo)
    assert precision.cpu_has_native_bf16() is expected


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "no")])
def test_a_run_records_what_auto_resolved_to(smoke, tmp_path, monkeypatch, native, expected):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    summary = run(smoke("trainer.mixed_precision=auto", "trainer.cpu=true", "trainer.max_steps=2"))
    assert summary["mixed_precision"] == expected
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["mixed_precision"] == expected
    assert "mixed_precision: auto" in (tmp_path / "run" / "config.yaml").read_text()  # the request is kept
