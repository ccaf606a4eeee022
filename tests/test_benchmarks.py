"""benchmarks/moe_step.py runs end to end (tiny sizes): its variants agree on the loss."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import model_cfg

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "moe_step.py"


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=300)


def test_moe_step_checks_the_loss_and_prints_every_variant():
    out = run("--batch", "8", "--repeats", "1", "--steps", "1", "--top-k", "1")
    assert out.returncode == 0, out.stderr
    check = out.stdout.split("loss check ")[1].split()  # "a == b" (asserted equal inside)
    assert check[0] == check[2].rstrip(";")
    for name in ("loop ", "loop+fused", "batched", "top-1", "speed-up batched/loop"):
        assert name in out.stdout
    floors = out.stdout.split("floors under a batched step: ")[1]
    arith, gemm = (float(part.split(" ms = ")[0].split()[-1]) for part in floors.split("; "))
    assert 0 < arith and 0 < gemm  # both are real timings, the Adam update in each


def test_matmul_flops_counts_the_first_layers_without_an_input_gradient():
    sys.path.insert(0, str(SCRIPT.parent))
    from moe_step import matmul_flops, step_flops
    cfg = model_cfg(experts=10)  # the figure: about 13 MFLOP/sample counting 6x
    assert round(step_flops(cfg, 1) / 1e6, 1) == 13.1
    first = 784 * 128 * 11  # manager + 10 expert first layers: forward + weight gradient
    assert step_flops(cfg, 1) - matmul_flops(cfg, 1) == 2.0 * first


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_a_gpu_is_a_one_line_error():
    out = run("--device", "cuda")
    assert out.returncode == 2 and "torch sees no GPU here; use --device cpu" in out.stderr


def test_gpu_first_benchmark_writes_its_figures(mnist_dir, tmp_path):
    """benchmarks/gpu_first.py end to end at toy sizes on the CPU: both recipes, eager and
    compiled, a FLOP count, a peak, the deterministic repeat (CPU runs repeat either way)
    and the log-likelihood timing with its extrapolation flagged."""
    import json

    out = tmp_path / "figures.json"
    r = subprocess.run([sys.executable, str(SCRIPT.parent / "gpu_first.py"), "--device", "cpu",
                        "--raw", str(mnist_dir), "--steps", "2", "--ll-images", "20",
                        "--iw-samples", "8", "--threads", "1", "--compile", "off", "default",
                        "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["matmul_peak_flops_per_s"] > 1e8 and set(figures["recipes"]) == {"moe_seed", "moe_imsat"}
    for preset, rec in figures["recipes"].items():
        assert [s["compile"] for s in rec["by_compile"]] == ["off", "default"] and rec["best"] in ("off", "default")
        for speed in rec["by_compile"]:
            assert speed["images_per_s"] > 0 and 0 < speed["peak_share"] < 1.5, (preset, speed)
            assert speed["flops_per_step"] > 2 * 784 * 128 * rec["batch"]  # at least one first layer
        assert [(r["deterministic"], r["identical"]) for r in rec["repeatability"]] == [(False, True), (True, True)]
        assert rec["log_likelihood"]["extrapolated"] and rec["log_likelihood"]["mean_nats"] < 0
    assert "moe_imsat (the conv-manager IMSAT recipe), compile default:" in r.stdout


def test_neighbours_benchmark_compares_equal_radii(mnist_dir):
    out = subprocess.run([sys.executable, str(SCRIPT.parent / "neighbours.py"), "--raw", str(mnist_dir),
                          "--rows", "300", "--k", "3"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "300 images, k=3" in out.stdout and "radii bit for bit equal" in out.stdout
    saved = float(out.stdout.split("a rerun saves ")[1].split()[0])
    assert saved >= 0
