"""The peers of benchmarks/harness/peers.py compute what they claim: the bare forward is the model's
own output over the whole frame in predict's layout, MONAI's and pytorch_fnet's tiled predictions are
whole-frame predictions of the same model. Tiny sizes; nothing timed."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from harness import peers, workloads  # noqa: E402


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((16, 48, 48)).astype(np.float32)


def test_bare_forward_is_the_models_own_output_in_predicts_layout(frame: np.ndarray) -> None:
    model = workloads.seeded_model("tiny", 0).eval()
    run = peers.bare_forward(model, [frame, frame], "cpu", "fp32")
    assert run.channels_last  # the package's rule on the CPU
    out = run()
    with torch.inference_mode():
        expected = model(torch.from_numpy(frame)[None, None])
    assert len(out) == 2 and out[0].shape == (1, 1, *frame.shape)
    torch.testing.assert_close(out[0].contiguous(), expected, atol=1e-4, rtol=1e-4)  # batch norm folded: rounding only


def test_tiled_peers_give_a_whole_frame_close_to_the_whole_pass_inside(frame: np.ndarray) -> None:
    pytest.importorskip("monai")
    model = workloads.seeded_model("tiny", 0).eval()
    monai_out = peers.monai_sliding_window(model, [frame], roi_size=(16, 32, 32))()[0][0, 0].numpy()
    fnet_out = peers.pytorch_fnet_predict(model, frame, (16, 32, 32), 0.25, model.multiple, "cpu")
    assert monai_out.shape == fnet_out.shape == frame.shape
    assert np.corrcoef(monai_out.ravel(), fnet_out.ravel())[0, 1] > 0.9  # same model, same blending; grids differ


def test_pytorch_fnet_net_has_the_papers_shape() -> None:
    net = peers.pytorch_fnet_net(depth=2, mult_chan=4)
    assert net(torch.zeros(1, 1, 16, 16, 16)).shape == (1, 1, 16, 16, 16)
    assert peers.MONAI_SETTINGS == {"roi_size": (32, 64, 64), "overlap": 0.25, "mode": "gaussian", "sw_batch_size": 4}
