"""``python train.py --help``: every config group with its choices, and every key with its meaning.

Hydra's own help lists the groups and dumps the composed config, but YAML comments — where each of our
keys says what it means and which values it takes — are lost in composition. This help is read from
the config files themselves: a choice's description is the first comment line of its file, and the
keys of the default model, trainer, optim and parallel files are printed as written, comments included.
"""

from __future__ import annotations

from pathlib import Path

import yaml

KEY_GROUPS = ("model", "trainer", "optim", "parallel")  # the default file of each: one commented line per key


def _first_comment(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("#") and not line.startswith("# @package"):
            return line.lstrip("# ").strip()
    return ""


def _defaults(configs: Path) -> dict[str, str]:
    chosen = {}
    for entry in yaml.safe_load((configs / "train.yaml").read_text())["defaults"]:
        if isinstance(entry, dict):
            (group, choice), = entry.items()
            chosen[group] = ",".join(choice) if isinstance(choice, list) else str(choice or "none")
    return chosen


def help_text(configs: Path) -> str:
    defaults = _defaults(configs)
    lines = ["python train.py [KEY=VALUE ...] [GROUP=CHOICE ...] [-m for a sweep]", "",
             "  python train.py router=sigmoid 'balance=[aux_free,seq_aux]' trainer.max_steps=400",
             "  python train.py -m router=top_k,sigmoid trainer.seed=0,1,2 run_dir=runs/cmp",
             "  python train.py 'experiment=[smoke,dense_baseline]'    (presets combine as a list)", "",
             "Config groups (GROUP=CHOICE; [default]; a choice's keys are then set as GROUP.KEY=VALUE):"]
    for group_dir in sorted(p for p in configs.iterdir() if p.is_dir()):
        group = group_dir.name
        lines.append(f"  {group}  [{defaults.get(group, 'none')}]")
        for option in sorted(group_dir.glob("*.yaml")):
            lines.append(f"    {option.stem:<16} {_first_comment(option)}")
    for group in KEY_GROUPS:
        path = configs / group / f"{defaults[group]}.yaml"
        lines += ["", f"{group}.KEY=VALUE ({path.relative_to(configs.parent)}):"]
        lines += [f"  {line}" for line in path.read_text().splitlines()
                  if line and not line.startswith(("#", "_target_", "_partial_"))]
    lines += ["", "The composed config of a command: add --cfg job. Hydra's own options: --hydra-help."]
    return "\n".join(lines)
