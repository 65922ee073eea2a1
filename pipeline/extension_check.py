"""Check an extended base against its manifest: ``python -m pipeline.extend --verify DIR``.

Files (sha256 of each), token ids (each added token one id, also glued to Korean
text), the model (tied flag, fingerprint, generation ids), the chat template
(``apply_chat_template`` gives exactly the ids of ``render``) and the tokenizer
other tools load (``AutoTokenizer``) against the one the project loads.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from core.chat_format import EOT, render, to_messages
from core.errors import UserError
from core.models import load_model, quick_checks, read_extended_manifest
from pipeline.extension import SAMPLE, file_hashes, fingerprint, is_tied

GLUE_PROBE = "안녕{}하세요"  # a special token glued to Korean text must still be exactly one id


def verify_extended(path: str | Path) -> list[str]:
    """Reload an extended base and check everything against its manifest; [] means OK."""
    path = Path(path)
    try:
        manifest = read_extended_manifest(path)
    except UserError as e:
        return [str(e)]
    problems = _check_files(path, manifest)
    try:
        model, tok = load_model(path)
    except Exception as e:  # a file that cannot be loaded is a failed check, not a crash
        return problems + [f"cannot load: {type(e).__name__}: {e}".splitlines()[0]]
    problems += quick_checks(model, tok, manifest)
    problems += _check_tokens(tok, manifest) + _check_model(model, tok, manifest)
    try:
        problems += check_template(tok) + _check_auto_tokenizer(path, tok)
    except ValueError as e:  # render() refuses a tokenizer without the chat tokens
        problems.append(str(e))
    return problems


def _check_auto_tokenizer(path: Path, tok) -> list[str]:
    """``AutoTokenizer`` (what other tools load) must agree with :func:`load_tokenizer`."""
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(path)
    instruction, context, persona, reply = SAMPLE
    a = render(auto, instruction, context, persona, response=reply)
    b = render(tok, instruction, context, persona, response=reply)
    if len(auto) != len(tok) or a != b:
        return [f"AutoTokenizer ({type(auto).__name__}) and the saved tokenizer.json give different ids"]
    return []


def _check_files(path: Path, manifest: dict[str, Any]) -> list[str]:
    problems = [f"manifest has no {k!r}" for k in ("base", "fingerprint", "added_tokens", "new_token_ids",
                                                    "embedding_rows", "tied", "seed", "versions", "files")
                if k not in manifest]
    expected, actual = manifest.get("files", {}), file_hashes(path)
    problems += [f"{n}: missing" for n in sorted(set(expected) - set(actual))]
    problems += [f"{n}: not listed in the manifest" for n in sorted(set(actual) - set(expected))]
    problems += [f"{n}: sha256 differs from the manifest" for n in sorted(set(expected) & set(actual))
                 if expected[n] != actual[n]]
    return problems


def _check_tokens(tok, manifest: dict[str, Any]) -> list[str]:
    problems = []
    for t, i in manifest.get("added_tokens", {}).items():
        if tok(t, add_special_tokens=False)["input_ids"] != [i]:
            problems.append(f"{t} does not encode to the single id {i}")
        glued = tok(GLUE_PROBE.format(t), add_special_tokens=False)["input_ids"]
        if glued.count(i) != 1:
            problems.append(f"{t} glued to Korean text ({GLUE_PROBE.format(t)!r}) is not one id {i}")
    return problems


def _check_model(model, tok, manifest: dict[str, Any]) -> list[str]:
    problems = []
    if is_tied(model) != manifest.get("tied"):
        problems.append(f"tied={is_tied(model)}, manifest says {manifest.get('tied')}")
    fp = fingerprint(model, tok, manifest.get("base", {}).get("sha256", ""), manifest.get("new_token_ids", []),
                     (manifest.get("dialogue") or {}).get("sha256"))
    if fp != manifest.get("fingerprint"):
        problems.append("fingerprint of the reloaded model/tokenizer differs from the manifest")
    eos = model.generation_config.eos_token_id
    eos = eos if isinstance(eos, list) else [eos]
    if tok.convert_tokens_to_ids(EOT) not in eos:
        problems.append(f"generation_config.eos_token_id {eos} does not include {EOT}")
    if model.generation_config.pad_token_id != tok.pad_token_id:
        problems.append("generation_config.pad_token_id differs from the tokenizer's pad id")
    return problems


def check_template(tok) -> list[str]:
    """``apply_chat_template`` must give exactly the ids of ``render`` on a sample conversation."""
    instruction, context, persona, reply = SAMPLE
    problems = []
    for response in (reply, None):
        ids = render(tok, instruction, context, persona, response=response).input_ids
        msgs = to_messages(instruction, context, persona, response, tokenizer=tok)
        via = tok.apply_chat_template(msgs, tokenize=True, return_dict=False,
                                      add_generation_prompt=response is None)
        if list(via) != ids:
            problems.append(f"apply_chat_template ids differ from render ids ({'with' if response else 'without'}"
                            " a reply)")
    return problems
