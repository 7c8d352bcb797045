"""The report reads result files with their own types (``model_validate_json``): what the evaluation wrote comes back
equal, JSON's NaN / Infinity included, and a file that is not such a result is an error naming the file."""

from __future__ import annotations

import json
import math
import re

import pytest

from agenttuning.eval.general import GeneralEvalResult, save_general_result
from agenttuning.report.inputs import ReportInputError, load_agent, load_general

RESULT = GeneralEvalResult(
    loss=2.5, perplexity=math.exp(2.5), exact_match=0.25, n=4, tokens=120, truncated=1, em_scored=3, em_skipped=1,
    details=[{"id": "g-1", "loss": 2.5, "match": True}, {"id": "g-2", "loss": math.inf, "match": None}],
)


def test_a_saved_general_result_reads_back_as_its_type(tmp_path):
    path = tmp_path / "general.json"
    save_general_result(RESULT, path)
    assert GeneralEvalResult.model_validate_json(path.read_text(encoding="utf-8")) == RESULT
    assert load_general(path) == {"loss": 2.5, "perplexity": math.exp(2.5), "exact_match": 0.25, "n": 4.0,
                                  "tokens": 120.0, "truncated": 1.0, "em_scored": 3.0, "em_skipped": 1.0,
                                  "em_tokens": 16.0}  # fmt: skip
    # the bytes on disk are json.dumps of the fields in their order, as when the result was a dataclass
    fields = ["loss", "perplexity", "exact_match", "n", "tokens", "truncated", "em_scored", "em_skipped", "em_tokens",
              "details"]  # fmt: skip
    assert path.read_text(encoding="utf-8") == json.dumps({k: getattr(RESULT, k) for k in fields}, indent=2) + "\n"


def test_nan_and_infinite_results_read_back(tmp_path):
    path = tmp_path / "general.json"
    save_general_result(GeneralEvalResult(loss=math.nan, perplexity=math.inf, exact_match=0.0, n=1, tokens=0), path)
    assert "NaN" in path.read_text() and "Infinity" in path.read_text()
    read = load_general(path)
    assert math.isnan(read["loss"]) and read["perplexity"] == math.inf


@pytest.mark.parametrize(("text", "message"), [
    ('{"loss": 2.0,', "invalid JSON: EOF while parsing a value at line 1 column 13"),
    ("[1, 2]", "not a general-eval result: record: Input should be an object"),
    ('{"loss": "low", "perplexity": 1, "exact_match": 0, "n": 1, "tokens": 1}',
     "not a general-eval result: loss: Input should be a valid number"),
    ('{"loss": 1, "perplexity": 1, "exact_match": 0, "n": 1, "tokens": 1, "bleu": 3}',
     "not a general-eval result: bleu: Extra inputs are not permitted"),
])  # fmt: skip
def test_a_file_that_is_not_a_general_result_is_named(tmp_path, text, message):
    path = tmp_path / "general.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ReportInputError, match="^" + re.escape(f"{path}: {message}")):
        load_general(path)


def test_an_agent_result_that_is_not_one_is_named(tmp_path):
    (tmp_path / "results.json").write_text('{"results_version": 1, "policy": "expert"}', encoding="utf-8")
    with pytest.raises(ReportInputError) as caught:
        load_agent(tmp_path)  # the directory holding results.json
    assert str(caught.value).startswith(f"{tmp_path / 'results.json'}: not an agent results file: policy_name: "
                                        "Field required; held_in: Field required; n: Field required; 5 more")
    with pytest.raises(ReportInputError, match=re.escape(f"{tmp_path / 'nowhere.json'}: not found")):
        load_agent(tmp_path / "nowhere.json")
