"""The three generation backends on the tiny model: vLLM agrees with transformers (greedy tokens, log-probs, LoRA
served unmerged), the OpenAI-compatible client round-trips through a real HTTP server, and a killed cached run
resumes without regenerating finished prompts.

The vLLM tests share one engine (starting one costs tens of seconds on CPU); `xdist_group` keeps them on one
pytest-xdist worker under `--dist loadgroup`, where vLLM spawns its engine processes as usual.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from posttrain.data import proving_ground_rows
from posttrain.errors import UsageError
from posttrain.generation import (
    OpenAICompatibleGenerator,
    SamplingParams,
    VLLMGenerator,
    generate_cached,
    load_generator,
)
from posttrain.io import read_jsonl

RAW_PROMPTS = ["hello world", "sort 123", "ab", "count 7"]


@pytest.fixture(scope="module")
def prompts():
    return [row["prompt"] for row in proving_ground_rows("sort8/sft", n=3)] + RAW_PROMPTS


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    """A random LoRA adapter with nonzero B (PEFT's init_lora_weights=False), so it really changes outputs."""
    import torch
    from peft import LoraConfig, get_peft_model

    from posttrain.models import load_causal_lm

    torch.manual_seed(0)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"],
                        init_lora_weights=False)
    path = tmp_path_factory.mktemp("lora") / "adapter"
    get_peft_model(load_causal_lm(str(tiny_model_dir)), config).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    return load_generator(str(tiny_model_dir), backend="transformers")


@pytest.fixture(scope="module")
def vllm_generator(tiny_model_dir):
    generator = VLLMGenerator(str(tiny_model_dir), enable_lora=True, max_lora_rank=8, max_model_len=256,
                              enforce_eager=True, show_progress=False)  # no torch.compile: nothing to gain here
    yield generator
    generator.close()


def assert_same_completions(expected, actual, atol=1e-3):
    for want_row, got_row in zip(expected, actual, strict=True):
        for want, got in zip(want_row, got_row, strict=True):
            assert (got.prompt_index, got.text, got.token_ids, got.finish_reason) == \
                   (want.prompt_index, want.text, want.token_ids, want.finish_reason)
            if want.logprobs is not None:
                assert got.logprobs == pytest.approx(want.logprobs, abs=atol)
                assert [set(t) for t in got.top_logprobs] == [set(t) for t in want.top_logprobs]
                assert all(g == pytest.approx(w, abs=atol) for g, w in zip(got.top_logprobs, want.top_logprobs))


@pytest.mark.xdist_group("vllm")
def test_vllm_greedy_tokens_and_logprobs_match_transformers(vllm_generator, hf, prompts):
    params = SamplingParams(max_new_tokens=8, logprobs=5)
    assert_same_completions(hf.generate(prompts, params), vllm_generator.generate(prompts, params))
    judge = SamplingParams(max_new_tokens=1, logprobs=20)  # how the LLM judge reads one token's alternatives
    assert_same_completions(hf.generate(prompts, judge), vllm_generator.generate(prompts, judge))


@pytest.mark.xdist_group("vllm")
def test_vllm_serves_a_lora_adapter_unmerged_like_the_peft_model(vllm_generator, hf, tiny_model_dir, adapter_dir,
                                                                  prompts):
    params = SamplingParams(max_new_tokens=8, logprobs=2)
    peft = load_generator(str(tiny_model_dir), backend="transformers", adapter=adapter_dir)
    expected = peft.generate(prompts, params)
    assert [r[0].token_ids for r in expected] != [r[0].token_ids for r in hf.generate(prompts, params)]
    served = vllm_generator.with_adapter(adapter_dir)
    assert_same_completions(expected, served.generate(prompts, params))
    assert served.model_id.endswith(adapter_dir) and vllm_generator.adapter is None  # the base stays available
    # Stop strings: cut where the transformers backend cuts, on text the adapter really produces.
    text = max((r[0].text for r in expected), key=lambda t: len(set(t)))
    stop = SamplingParams(max_new_tokens=8, stop=(text[len(text) // 2],))
    stopped = served.generate(prompts, stop)
    assert_same_completions(peft.generate(prompts, stop), stopped)
    assert any(c[0].finish_reason == "stop" for c in stopped)


@pytest.mark.xdist_group("vllm")
def test_vllm_sampling_returns_n_seeded_completions_per_prompt(vllm_generator, prompts):
    params = SamplingParams(n=3, temperature=1.0, top_k=50, max_new_tokens=6, seed=1)
    first, again = vllm_generator.generate(prompts, params), vllm_generator.generate(prompts, params)
    assert [len(row) for row in first] == [3] * len(prompts)
    assert all(c.prompt_index == i and 1 <= len(c.token_ids) <= 6 for i, row in enumerate(first) for c in row)
    assert [[c.token_ids for c in row] for row in first] == [[c.token_ids for c in row] for row in again]
    assert all(len({tuple(c.token_ids) for c in row}) > 1 for row in first)  # the n samples differ
    other = vllm_generator.generate(prompts, SamplingParams(n=3, temperature=1.0, max_new_tokens=6, seed=2))
    assert [[c.token_ids for c in row] for row in other] != [[c.token_ids for c in row] for row in first]


@pytest.mark.xdist_group("vllm")
def test_vllm_streams_each_prompt_into_the_cache(vllm_generator, prompts, tmp_path):
    params, cache = SamplingParams(max_new_tokens=5), tmp_path / "vllm.jsonl"
    streamed = []
    results = vllm_generator.generate(prompts, params, on_result=lambda i, c: streamed.append(i))
    assert sorted(streamed) == list(range(len(prompts)))
    cached = generate_cached(vllm_generator, prompts, params, cache)
    assert [r[0].token_ids for r in cached] == [r[0].token_ids for r in results]
    assert sorted(r["index"] for r in read_jsonl(cache)) == list(range(len(prompts)))


class _OpenAIStyleServer(ThreadingHTTPServer):
    """Speaks /v1/completions and /v1/chat/completions JSON, answering with a real transformers generator."""

    def __init__(self, generator):
        super().__init__(("127.0.0.1", 0), _OpenAIHandler)
        self.generator, self.seen = generator, []


class _OpenAIHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.seen.append((self.path, self.headers.get("Authorization"), body))
        chat = self.path.endswith("/chat/completions")
        top = body.get("top_logprobs") if chat else body.get("logprobs")
        params = SamplingParams(n=body["n"], temperature=body["temperature"], top_p=body["top_p"],
                                top_k=body.get("top_k", 0), seed=body["seed"], stop=tuple(body.get("stop") or ()),
                                max_new_tokens=body["max_completion_tokens" if chat else "max_tokens"],
                                logprobs=top if (body.get("logprobs") if chat else top is not None) else None)
        [completions] = self.server.generator.generate([body["messages"] if chat else body["prompt"]], params)
        choices = [self._choice(c, j, chat, body.get("return_token_ids")) for j, c in enumerate(completions)]
        payload = json.dumps({"id": "x", "object": "chat.completion" if chat else "text_completion", "created": 0,
                              "model": body["model"], "choices": choices}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _choice(self, completion, index, chat, token_ids):
        decode = self.server.generator.tokenizer.decode
        tokens = [decode([t]) for t in completion.token_ids]
        choice = {"index": index, "finish_reason": completion.finish_reason, "logprobs": None,
                  **({"token_ids": completion.token_ids} if token_ids else {})}
        if chat:
            choice["message"] = {"role": "assistant", "content": completion.text}
        else:
            choice["text"] = completion.text
        if completion.logprobs is not None:
            steps = list(zip(tokens, completion.logprobs, completion.top_logprobs))
            choice["logprobs"] = {"content": [{"token": t, "logprob": lp, "top_logprobs": [
                {"token": k, "logprob": v} for k, v in top.items()]} for t, lp, top in steps]} if chat else {
                "tokens": tokens, "token_logprobs": completion.logprobs, "top_logprobs": completion.top_logprobs}
        return choice


@pytest.fixture
def openai_server(hf):
    server = _OpenAIStyleServer(hf)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_openai_compatible_client_round_trips_chat_and_text_prompts(openai_server, hf, prompts, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setenv("POSTTRAIN_TEST_KEY", "sk-test-secret-123")
    base_url = f"http://127.0.0.1:{openai_server.server_address[1]}/v1"
    client = load_generator("tiny", backend="openai", base_url=base_url, api_key_env="POSTTRAIN_TEST_KEY",
                            return_token_ids=True, show_progress=False)
    params = SamplingParams(max_new_tokens=6, logprobs=3, stop=("3",))
    assert_same_completions(hf.generate(prompts, params), client.generate(prompts, params), atol=1e-6)
    endpoints = [path for path, _, _ in openai_server.seen]
    assert endpoints.count("/v1/chat/completions") == 3 and endpoints.count("/v1/completions") == len(RAW_PROMPTS)
    assert {auth for _, auth, _ in openai_server.seen} == {"Bearer sk-test-secret-123"}
    sampled = client.generate(prompts[:2], SamplingParams(n=2, temperature=1.0, top_k=7, max_new_tokens=4))
    assert [len(row) for row in sampled] == [2, 2] and openai_server.seen[-1][2]["top_k"] == 7
    cache = tmp_path / "api.jsonl"
    generate_cached(client, prompts, params, cache)
    assert all("sk-test-secret" not in text for text in (repr(client), client.model_id, cache.read_text()))


def test_openai_compatible_client_reports_an_unreachable_server(openai_server):
    port = openai_server.server_address[1]
    openai_server.shutdown()
    openai_server.server_close()
    client = OpenAICompatibleGenerator(f"http://127.0.0.1:{port}/v1", "tiny", max_retries=0, show_progress=False)
    with pytest.raises(UsageError, match="cannot reach"):
        client.generate(["hello"], SamplingParams(max_new_tokens=2))


CHILD = """
import sys
from posttrain.generation import SamplingParams, generate_cached, load_generator
generator = load_generator(sys.argv[1], backend="transformers", batch_size=1)
generate_cached(generator, [f"count {i}" for i in range(int(sys.argv[3]))], SamplingParams(max_new_tokens=8),
                sys.argv[2])
"""


def test_a_killed_cached_run_resumes_without_regenerating_finished_prompts(tiny_model_dir, hf, tmp_path):
    total, cache = 400, tmp_path / "killed.jsonl"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tiny_model_dir), str(cache), str(total)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while child.poll() is None and len(list(read_jsonl(cache))) < 5:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL  # killed mid-run, not finished
    with cache.open("a") as handle:
        handle.write('{"index": 399, "prompt_sha": "')  # and a torn last line, as a kill mid-write leaves
    finished = {record["index"] for record in read_jsonl(cache)}
    assert 5 <= len(finished) < total

    prompts = [f"count {i}" for i in range(total)]
    asked = []

    class Counting:
        model_id = hf.model_id

        def generate(self, batch, params, on_result=None):
            asked.extend(batch)
            return hf.generate(batch, params, on_result=on_result)

    params = SamplingParams(max_new_tokens=8)
    resumed = generate_cached(Counting(), prompts, params, cache)
    assert asked == [p for i, p in enumerate(prompts) if i not in finished]
    assert [r[0].token_ids for r in resumed] == [r[0].token_ids for r in hf.generate(prompts, params)]
