"""README's imagenet256 section: its resource table is the output of `python -m bench.budget` (not typed in), and
it names the commands a user needs (dry run and its stand-in assets, full run, --fsdp, --resume, --from-release,
multi-node rendezvous)."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _section() -> str:
    text = README.read_text()
    return text[text.index("## imagenet256: the paper protocol") : text.index("## Metrics")]


def test_resource_table_is_the_budget_commands_output(capsys):
    from bench.budget import main

    assert main([]) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    sec = _section()
    block = sec[sec.index("<!-- budget: python -m bench.budget -->") : sec.index("<!-- /budget -->")]
    assert [line for line in block.splitlines() if line.startswith("|")] == printed
    assert any("--fsdp" in line for line in printed) and any("DDP" in line for line in printed)


def test_section_names_every_command_and_asset():
    sec = _section()
    for needle in ("python -m bench.dry_run_assets", "--preset tiny --epochs 2 --num-samples 64 --nproc 2", "--fsdp",
                   "--resume results/imagenet256/", "--from-release", "--rdzv-endpoint", "GENBENCH_SD_VAE",
                   "GENBENCH_WEIGHTS", "weights-inception-2015-12-05-6726825d.pth", "VIRTUAL_imagenet256_labeled.npz"):  # fmt: skip
        assert needle in sec, needle
