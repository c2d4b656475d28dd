"""Every accelerate config under recipes/accelerate/ loads with accelerate's own loader and says what we expect."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

CONFIG_DIR = Path(__file__).resolve().parents[2] / "recipes" / "accelerate"

# name: (distributed_type, num_processes, mixed_precision, use_cpu, zero_stage)
EXPECTED = {
    "single_gpu": ("NO", 1, "bf16", False, None),
    "ddp": ("MULTI_GPU", 8, "bf16", False, None),
    "deepspeed_zero2": ("DEEPSPEED", 8, "bf16", False, 2),
    "deepspeed_zero2_offload": ("DEEPSPEED", 8, "bf16", False, 2),
    "deepspeed_zero3": ("DEEPSPEED", 8, "bf16", False, 3),
    "deepspeed_zero3_offload": ("DEEPSPEED", 8, "bf16", False, 3),
    # MULTI_GPU + use_cpu: torchrun starts the 2 ranks (accelerate's MULTI_CPU type would start one without mpirun).
    "cpu_ddp": ("MULTI_GPU", 2, "no", True, None),
    "cpu_deepspeed_zero2": ("DEEPSPEED", 2, "no", True, 2),
    "cpu_deepspeed_zero3": ("DEEPSPEED", 2, "no", True, 3),
}


def _load(name: str):
    from accelerate.commands.config.config_args import load_config_from_file

    return load_config_from_file(str(CONFIG_DIR / f"{name}.yaml"))


def test_every_config_file_is_covered():
    assert sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_with_expected_values(name):
    distributed_type, num_processes, mixed_precision, use_cpu, zero_stage = EXPECTED[name]
    config = _load(name)
    assert str(config.distributed_type).split(".")[-1] == distributed_type
    assert config.num_processes == num_processes
    assert str(config.mixed_precision).split(".")[-1].lower() == mixed_precision
    assert bool(config.use_cpu) is use_cpu
    assert config.num_machines == 1
    if zero_stage is None:
        assert not config.deepspeed_config
    else:
        assert config.deepspeed_config["zero_stage"] == zero_stage


@pytest.mark.parametrize("name", ["deepspeed_zero3", "deepspeed_zero3_offload", "cpu_deepspeed_zero3"])
def test_zero3_configs_gather_16bit_weights_on_save(name):
    ds = _load(name).deepspeed_config
    assert ds["zero3_save_16bit_model"] is True
    assert ds["zero3_init_flag"] is True


def test_offload_config_offloads_params_and_optimizer_to_cpu():
    ds = _load("deepspeed_zero3_offload").deepspeed_config
    assert ds["offload_param_device"] == "cpu"
    assert ds["offload_optimizer_device"] == "cpu"


def test_zero2_offload_config_offloads_the_optimizer_only():
    ds = _load("deepspeed_zero2_offload").deepspeed_config
    assert ds["offload_optimizer_device"] == "cpu"
    assert ds["offload_param_device"] == "none"  # ZeRO-2 keeps full parameters on every GPU
