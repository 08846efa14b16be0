"""The typed sampler settings contract (baselines/api.py): validation, unknown keys, one guidance convention,
validated recipe merges, protocols, unclamped sample_images, unknown build options."""

import dataclasses

import pytest
import torch

from baselines.api import (
    BACKBONES,
    FlowMatchingSampler,
    FlowSampler,
    Recipe,
    build_backbone,
    sample_generators,
)
from bench.errors import OptionError


def test_replace_rejects_unknown_keys_naming_the_known_ones():
    s = FlowMatchingSampler(steps=10)
    with pytest.raises(
        OptionError, match=r"unknown flow-matching sampler option\(s\) stpes; known: mode, steps"
    ):
        s.replace(stpes=3)
    with pytest.raises(OptionError, match="known: guidance, attn_temp, mode"):
        FlowSampler().replace(guidance_interval=(0, 1))
    assert s.replace(steps=3).steps == 3 and s.steps == 10  # frozen: replace returns a new value
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.steps = 4


@pytest.mark.parametrize(
    "bad",
    [
        dict(mode="euler"),
        dict(steps=0),
        dict(guidance_interval=(0.7, 0.0)),
        dict(t_last=1.5),
        dict(time_shift=0),
    ],
)
def test_flow_matching_values_are_validated(bad):
    with pytest.raises(OptionError):
        FlowMatchingSampler(**bad)


@pytest.mark.parametrize("bad", [dict(mode="parallel"), dict(mode="jacobi", jacobi_block=0), dict(guidance=-1.0),
                                 dict(guide_what="c"), dict(attn_temp=0.0)])  # fmt: skip
def test_flow_values_are_validated(bad):
    with pytest.raises(OptionError):
        FlowSampler(**bad)


def test_describe_uses_one_guidance_convention():
    assert FlowMatchingSampler(mode="sde", steps=32, guidance=1.8).describe() == {
        "sampler": "sde",
        "steps": 32,
        "guidance": 1.8,
    }
    sched = FlowMatchingSampler(guidance_schedule=[[0.9, 1.0, 0.9], [0.0, 0.7, 2.5]])
    assert (
        sched.guidance_schedule == ((0.9, 1.0, 0.9), (0.0, 0.7, 2.5)) and sched.describe()["guidance"] == 2.5
    )
    assert FlowSampler().describe()["guidance"] == 1.0  # weight 0 = off = scale 1
    assert FlowSampler(guidance=2.3).describe()["guidance"] == pytest.approx(3.3)  # weight w -> scale 1 + w


def test_recipe_sampler_merge_is_validated():
    r = Recipe(sampler=FlowMatchingSampler(mode="sde", steps=250, guidance=1.8))
    r2 = r.replace(sampler={"steps": 32})
    assert isinstance(r2.sampler, FlowMatchingSampler) and (r2.sampler.steps, r2.sampler.mode) == (32, "sde")
    with pytest.raises(OptionError, match="unknown flow-matching sampler option"):
        r.replace(sampler={"step": 32})
    with pytest.raises(OptionError, match="unknown recipe field"):
        r.replace(sampler_steps=3)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_unknown_build_options_are_rejected(name):
    with pytest.raises(OptionError, match="known"):
        build_backbone(name, "tiny", no_such_option=1)


def test_unknown_preset_and_backbone():
    with pytest.raises(OptionError, match="known"):
        build_backbone("tarflow", "huge")
    with pytest.raises(OptionError, match="unknown backbone"):
        build_backbone("dit")


def test_tarflow_settings_protocols_and_unclamped_images():
    bb = build_backbone("tarflow", "tiny", num_classes=4, image_size=8)
    assert set(bb.protocols) == {"paper", "common"} and bb.protocols["paper"] == bb.recipe.sampler
    gen = bb.generator
    d = gen.describe(bb.recipe.sampler)
    T = gen.model.num_patches
    assert d == {"sampler": "sequential", "steps": 4 * (T - 1), "guidance": pytest.approx(3.3)}
    assert gen.nfe(bb.recipe.sampler) == 2 * 4 * (T - 1) + 2  # CFG pair per step + denoise forward/backward
    # a tokenizer that doubles its input makes any sample leave [-1, 1]: sample_images must not clamp
    bb.tokenizer.decode = lambda z: 10 * z
    labels, gens = torch.arange(2), sample_generators(0, range(2))
    noise = torch.randn(2, 3, 8, 8)
    x = bb.sample_images(labels, noise, gens, mode="sequential", denoise=False, guidance=0.0)
    assert x.abs().max() > 1
    with pytest.raises(OptionError):
        bb.sample_images(labels, noise, gens, steps=3)


def test_vavae_protocols_paper_keeps_the_channel_quirk():
    bb = build_backbone("vavae_lightningdit", "tiny")
    assert bb.protocols["paper"].guidance_channels == 3 and bb.protocols["common"].guidance_channels is None
    common = bb.protocols["common"]  # its own all-channel scale (issue #12)
    assert bb.protocols["paper"].replace(guidance_channels=None, guidance=common.guidance) == common
    assert 1 < common.guidance < bb.protocols["paper"].guidance
