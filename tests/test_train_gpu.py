"""Training on CUDA: a tiny run whose checkpoint loads on the CPU and gives the same answers."""

from __future__ import annotations

import pytest
import torch

from stn_serve.train import TrainConfig, fit, load_checkpoint

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("arch", ["stcnn", "cnn"])
def test_cuda_run_gives_a_cpu_loadable_checkpoint(tmp_path, arch):
    config = TrainConfig(
        data="digits",
        distortion="RTS",
        crop_size=(28, 28),
        max_train_samples=320,
        max_test_samples=64,
        epochs=3,
        arch=arch,
        device="cuda",
        progress=False,
        plots=False,
        out_dir=str(tmp_path),
    )
    result = fit(config)
    losses = [record["train_loss"] for record in result.history]
    assert losses[-1] < losses[0], losses
    checkpoint = load_checkpoint(result.best_checkpoint)
    assert all(tensor.device.type == "cpu" for tensor in checkpoint.state_dict.values())
    image = torch.rand(8, *checkpoint.input_shape)
    cpu_model = checkpoint.build_model()
    gpu_model = checkpoint.build_model().cuda()
    with torch.no_grad():
        on_cpu, on_gpu = cpu_model(image), gpu_model(image.cuda())
    for name, cpu_value, gpu_value in zip(on_cpu._fields, on_cpu, on_gpu):
        torch.testing.assert_close(gpu_value.cpu(), cpu_value, atol=1e-4, rtol=1e-4, msg=name)
