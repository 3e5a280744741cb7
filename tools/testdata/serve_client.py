#!/usr/bin/env python3
"""Clients of `serve` for serve_test.sh: the openai package and raw HTTP against http://127.0.0.1:PORT.

    serve_client.py quality PORT REFERENCE.json
      greedy text equals transformers' (REFERENCE.json from smollm2_reference.py): chat and completions, streamed
      and not; bad requests get 4xx JSON errors; a client that disconnects mid-stream has its request cancelled
      (the server goes idle).
    serve_client.py load PORT [CLIENTS REQUESTS]
      a load test: 32 concurrent clients, 200 requests (a mix of streamed and not, chat and completions, greedy
      and sampled, 4 prompts): nothing lost, every response well-formed, every greedy text equal to that prompt's
      text when it ran alone.
Exits non-zero with a message on the first failure.
"""
import concurrent.futures
import http.client
import json
import sys
import time

import openai


def fail(msg):
    print("FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


def quality(port, ref_path):
    ref = {c["name"]: c for c in json.load(open(ref_path))["cases"]}
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=600)
    model = client.models.list().data[0].id

    # Greedy text equals transformers'.
    cap, col = ref["capital"], ref["colors"]
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": cap["prompt"]}],
                                       temperature=0, max_tokens=cap["max_new_tokens"])
    if r.choices[0].message.content != cap["text"]:
        fail(f"chat: {r.choices[0].message.content!r} != transformers {cap['text']!r}")
    if r.choices[0].finish_reason != "stop" or r.usage.prompt_tokens != len(cap["prompt_ids"]):
        fail(f"chat: finish_reason {r.choices[0].finish_reason}, usage {r.usage}")
    r = client.completions.create(model=model, prompt=col["prompt"], temperature=0, max_tokens=col["max_new_tokens"])
    if r.choices[0].text != col["text"]:
        fail(f"completions: {r.choices[0].text!r} != transformers {col['text']!r}")
    if r.choices[0].finish_reason != "length" or r.usage.completion_tokens != col["max_new_tokens"]:
        fail(f"completions: finish_reason {r.choices[0].finish_reason}, usage {r.usage}")
    chunks = list(client.chat.completions.create(model=model, messages=[{"role": "user", "content": cap["prompt"]}],
                                                 temperature=0, max_tokens=cap["max_new_tokens"], stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    if text != cap["text"] or chunks[-1].choices[0].finish_reason != "stop":
        fail(f"streamed chat: {text!r} (finish {chunks[-1].choices[0].finish_reason})")
    chunks = list(client.completions.create(model=model, prompt=col["prompt"], temperature=0,
                                            max_tokens=col["max_new_tokens"], stream=True))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    if text != col["text"]:
        fail(f"streamed completions: {text!r}")
    print("ok: greedy text equals transformers (chat, completions, streamed and not)")

    # Bad requests: 4xx with an error object.
    def post(path, body, expect):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != expect:
            fail(f"{path} {body!r}: HTTP {resp.status}, want {expect}: {data!r}")
        err = json.loads(data)
        if "error" not in err or not err["error"].get("message"):
            fail(f"{path} {body!r}: no error object: {data!r}")
    post("/v1/completions", "not json", 400)
    post("/v1/completions", json.dumps({"max_tokens": 3}), 400)
    post("/v1/completions", json.dumps({"prompt": "x", "temperature": "hot"}), 400)
    post("/v1/completions", json.dumps({"prompt": "x", "max_tokens": 100000}), 400)
    post("/v1/chat/completions", json.dumps({"messages": []}), 400)
    post("/v1/chat/completions", json.dumps({"messages": [{"content": "no role"}]}), 400)
    post("/v1/nothing", "{}", 404)
    print("ok: bad requests get 4xx JSON errors")

    # A client that drops mid-stream: its request is cancelled, the server goes idle.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", "/v1/completions", body=json.dumps({"prompt": "Once upon a time", "max_tokens": 200,
                                                              "temperature": 0, "stream": True}),
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    resp.fp.readline()  # the first event
    conn.sock.close()
    conn.close()
    deadline = time.time() + 60
    while time.time() < deadline:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", "/health")
        h = json.loads(c.getresponse().read())
        if h["active"] == 0 and h["queued"] == 0:
            break
        time.sleep(0.5)
    else:
        fail(f"the dropped request was not cancelled: {h}")
    print("ok: a dropped client's request was cancelled")


def load(port, clients, requests):
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=600)
    model = client.models.list().data[0].id
    # Greedy results under load must equal each prompt's result alone.
    prompts = ["The capital of Italy is", "def fibonacci(n):", "List three fruits:", "Water boils at"]
    alone = {p: client.completions.create(model=model, prompt=p, temperature=0, max_tokens=5).choices[0].text
             for p in prompts}

    def one(i):
        p = prompts[i % len(prompts)]
        kind = i % 4
        if kind == 0:
            r = client.completions.create(model=model, prompt=p, temperature=0, max_tokens=5)
            return p, r.choices[0].text, r.choices[0].finish_reason
        if kind == 1:
            s = client.completions.create(model=model, prompt=p, temperature=0, max_tokens=5, stream=True)
            parts = list(s)
            return p, "".join(c.choices[0].text for c in parts if c.choices), parts[-1].choices[0].finish_reason
        if kind == 2:
            r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": p}],
                                               temperature=0.8, seed=i, max_tokens=4)
            if r.choices[0].message.role != "assistant" or r.usage.completion_tokens > 4:
                raise ValueError(f"chat response {r}")
            return None, r.choices[0].message.content, r.choices[0].finish_reason
        r = client.completions.create(model=model, prompt=p, temperature=1.0, top_p=0.9, seed=i, max_tokens=3)
        return None, r.choices[0].text, r.choices[0].finish_reason

    t0 = time.time()
    results, errors = [], []
    with concurrent.futures.ThreadPoolExecutor(max_workers=clients) as pool:
        futures = [pool.submit(one, i) for i in range(requests)]
        for f in concurrent.futures.as_completed(futures):
            try:
                results.append(f.result())
            except Exception as e:  # noqa: BLE001 - every failure is reported
                errors.append(repr(e))
    elapsed = time.time() - t0
    if errors:
        fail(f"{len(errors)} of {requests} requests failed, e.g. {errors[0]}")
    if len(results) != requests:
        fail(f"{len(results)} responses for {requests} requests")
    for p, text, finish in results:
        if finish not in ("stop", "length") or not isinstance(text, str):
            fail(f"malformed response: {text!r} {finish!r}")
        if p is not None and text != alone[p]:
            fail(f"under load {p!r} gave {text!r}, alone {alone[p]!r}")
    print(f"ok: load test, {requests} requests from {clients} clients in {elapsed:.1f} s, all well-formed, greedy "
          "texts equal to each prompt alone")



def main():
    if len(sys.argv) >= 4 and sys.argv[1] == "quality":
        quality(int(sys.argv[2]), sys.argv[3])
    elif len(sys.argv) >= 3 and sys.argv[1] == "load":
        clients = int(sys.argv[3]) if len(sys.argv) > 3 else 32
        requests = int(sys.argv[4]) if len(sys.argv) > 4 else 200
        load(int(sys.argv[2]), clients, requests)
    else:
        fail("usage: serve_client.py quality PORT REFERENCE.json | load PORT [CLIENTS REQUESTS]")


if __name__ == "__main__":
    main()
