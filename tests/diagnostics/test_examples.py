import copy
import json
from pathlib import Path

import pytest

from ranktuner_verl.data.tiny import COT_SYSTEM_PROMPT
from ranktuner_verl.diagnostics.examples import Example, load_examples, tokenize_example

EVAL_DIR = Path(__file__).parents[2] / ".." / "shared" / "data" / "eval"


def test_messages_parquet_last_assistant_turn_is_the_response(sft_parquet):
    examples = load_examples(sft_parquet)
    assert len(examples) == 12
    first = examples[0]
    assert [m["role"] for m in first.prompt_messages] == ["system", "user"]
    assert first.prompt_messages[0]["content"] == COT_SYSTEM_PROMPT
    assert first.response.endswith("}.") and "\\boxed{" in first.response


def test_prompt_response_jsonl_and_max_examples(prompt_response_jsonl):
    examples = load_examples(prompt_response_jsonl, max_examples=4)
    assert len(examples) == 4
    assert examples[0].prompt_messages == [{"role": "user", "content": examples[0].prompt_messages[0]["content"]}]


def test_reads_a_real_benchmark_file():
    examples = load_examples(EVAL_DIR / "math_oai.jsonl", max_examples=3)
    row = json.loads((EVAL_DIR / "math_oai.jsonl").open().readline())
    assert examples[0].response == row["solution"]
    assert examples[0].prompt_messages[0]["content"] == row["problem"]


@pytest.mark.parametrize("content, message", [
    ("", "holds no examples"),
    ('{"text": "hello"}\n', "match no known schema"),
    ('{"messages": [{"role": "user", "content": "hi"}]}\n', "no assistant turn"),
])
def test_bad_files_say_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_examples(path)


def test_missing_file_and_wrong_suffix(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_examples(tmp_path / "nope.parquet")
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="use .parquet or .jsonl"):
        load_examples(tmp_path / "data.csv")


def test_tokenisation_follows_the_chat_template(tokenizer, sft_parquet):
    example = load_examples(sft_parquet)[0]
    tokenized = tokenize_example(tokenizer, example)
    full = tokenizer.apply_chat_template(example.prompt_messages + [{"role": "assistant", "content": example.response}],
                                         tokenize=False)
    assert tokenizer.decode(tokenized.prompt_ids + tokenized.response_ids) == full
    assert tokenizer.decode(tokenized.prompt_ids).endswith("<|im_start|>assistant\n")
    assert tokenizer.decode(tokenized.response_ids[tokenized.content]) == example.response
    assert tokenizer.decode(tokenized.response_ids[tokenized.content.stop:]) == "<|im_end|>\n"
    assert tokenized.is_noise == [False] * len(tokenized.response_ids)


def test_tokenizer_without_chat_template_is_refused(tokenizer):
    bare = copy.deepcopy(tokenizer)
    bare.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        tokenize_example(bare, Example([{"role": "user", "content": "1+1?"}], "2"))
