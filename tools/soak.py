#!/usr/bin/env python3
"""A bounded soak of `whale serve` on loopback: good, bad, slow and cancelled clients at once.

Every good answer must equal the answer the same greedy request got alone before the load;
every bad request must get a 4xx with an OpenAI error body; slow uploads must be cut off;
cancelled streams must free what they held. The server's RSS is sampled throughout.
Writes a JSON report and exits non-zero on any lost or wrong response or growing RSS.

    python3 tools/soak.py --minutes 10 --out target/soak
"""
import argparse, http.client, json, os, random, socket, subprocess, sys, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUESTIONS = [f"What is {a} + {b}?" for a, b in [(1, 2), (12, 30), (7, 8), (100, 23), (5, 5), (9, 40)]]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Client:
    def __init__(self, port):
        self.port = port

    def post(self, path, body, timeout=60):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        c.request("POST", path, data, {"Content-Type": "application/json"})
        r = c.getresponse()
        out = r.status, r.read().decode("utf-8", "replace")
        c.close()
        return out

    def get(self, path):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        c.request("GET", path)
        r = c.getresponse()
        out = r.status, r.read().decode()
        c.close()
        return out


def ask(q, stream=False):
    return {"messages": [{"role": "user", "content": q}], "max_tokens": 24, "temperature": 0,
            "ignore_eos": True, "stream": stream}


def answer_of(status, body, stream):
    if status != 200:
        return None
    if not stream:
        m = json.loads(body)["choices"][0]["message"]
        return (m.get("reasoning_content") or "").strip(), (m.get("content") or "").strip()
    reasoning, content, done = "", "", False
    for line in body.splitlines():
        if not line.startswith("data: "):
            continue
        d = line[6:]
        if d == "[DONE]":
            done = True
            continue
        v = json.loads(d)
        if "error" in v:
            return None
        for c in v.get("choices", []):
            reasoning += c.get("delta", {}).get("reasoning_content") or ""
            content += c.get("delta", {}).get("content") or ""
    return (reasoning.strip(), content.strip()) if done else None


BAD = [
    (b"{not json", 400),
    (json.dumps({"messages": "hi"}).encode(), 400),
    (json.dumps({"messages": [{"role": "wizard", "content": "x"}]}).encode(), 400),
    (json.dumps({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}).encode(), 400),
    (json.dumps({"messages": [{"role": "user", "content": "x"}], "max_tokens": 10**9}).encode(), 400),
    (json.dumps({"messages": [{"role": "user", "content": "x"}], "model": "gpt-9"}).encode(), 404),
    (json.dumps({"messages": [{"role": "user", "content": "x"}], "n": 1000}).encode(), 400),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--whale", default=os.path.join(ROOT, "target/release/whale"))
    ap.add_argument("--model", default=os.path.join(ROOT, "testdata/fixtures/tiny-v3"))
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--clients", type=int, default=12)
    ap.add_argument("--out", default=os.path.join(ROOT, "target/soak"))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    port = free_port()
    log = open(os.path.join(a.out, "server.log"), "w")
    srv = subprocess.Popen([a.whale, "serve", "--model", a.model, "--port", str(port), "--max-batch", "8",
                            "--cache-mem", "64MiB", "--block-size", "4", "--read-timeout", "2",
                            "--max-queued", "64"], stdout=log, stderr=log)
    cl = Client(port)
    for _ in range(200):
        try:
            if cl.get("/health")[0] == 200:
                break
        except OSError:
            time.sleep(0.05)
    want = {q: answer_of(*cl.post("/v1/chat/completions", ask(q)), False) for q in QUESTIONS}
    counts = {k: 0 for k in ["good", "bad", "slow", "cancelled", "too_big", "busy"]}
    failures = []
    lock = threading.Lock()
    deadline = time.time() + a.minutes * 60
    huge = json.dumps(ask("many words " * 350000)).encode()

    def fail(kind, what):
        with lock:
            failures.append({"kind": kind, "what": what[:300]})

    def worker(seed):
        rnd = random.Random(seed)
        while time.time() < deadline:
            r = rnd.random()
            try:
                if r < 0.5:
                    q, stream = rnd.choice(QUESTIONS), rnd.random() < 0.5
                    status, body = cl.post("/v1/chat/completions", ask(q, stream))
                    if status == 429:
                        with lock:
                            counts["busy"] += 1
                        continue
                    got = answer_of(status, body, stream)
                    if got != want[q]:
                        fail("wrong" if got else "lost", f"{q} stream={stream}: {status} {body}")
                    with lock:
                        counts["good"] += 1
                elif r < 0.7:
                    body, code = rnd.choice(BAD)
                    status, text = cl.post("/v1/chat/completions", body)
                    if status != code or "error" not in json.loads(text):
                        fail("bad", f"{body[:80]!r}: {status} {text}")
                    with lock:
                        counts["bad"] += 1
                elif r < 0.72:
                    status, text = cl.post("/v1/chat/completions", huge)
                    if status != 400:
                        fail("too_big", f"{status} {text}")
                    with lock:
                        counts["too_big"] += 1
                elif r < 0.82:
                    s = socket.create_connection(("127.0.0.1", port), timeout=30)
                    body = json.dumps(ask("slow")).encode()
                    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                              + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:5])
                    t = time.time()
                    reply = s.recv(4096)
                    if not (reply.startswith(b"HTTP/1.1 408") or reply == b"") or time.time() - t > 10:
                        fail("slow", repr(reply[:200]))
                    s.close()
                    with lock:
                        counts["slow"] += 1
                else:
                    s = socket.create_connection(("127.0.0.1", port), timeout=30)
                    body = json.dumps({**ask("Tell a long story", True), "max_tokens": 200}).encode()
                    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                              + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
                    s.recv(1024)
                    s.close()
                    with lock:
                        counts["cancelled"] += 1
            except Exception as e:  # a refused or reset connection is a lost response
                fail("lost", f"{type(e).__name__}: {e}")

    rss = []

    def sample():
        while time.time() < deadline:
            rss.append((round(time.time() - start, 1), rss_kb(srv.pid)))
            time.sleep(5)

    start = time.time()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(a.clients)]
    threads.append(threading.Thread(target=sample))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(1)
    _, metrics = cl.get("/metrics")
    gauge = {l.split()[0]: float(l.split()[1]) for l in metrics.splitlines() if l and not l.startswith("#")}
    health = cl.get("/health")[0]
    srv.terminate()
    code = srv.wait(timeout=60)
    # RSS after the first minute against the end: flat means no leak under load
    settled = [kb for t, kb in rss if t >= 60] or [kb for _, kb in rss]
    report = {
        "minutes": a.minutes, "clients": a.clients, "counts": counts,
        "lost": sum(f["kind"] == "lost" for f in failures), "wrong": sum(f["kind"] == "wrong" for f in failures),
        "failures": failures[:50], "health": health, "exit_code": code,
        "rss_kb": rss, "rss_settled_first_kb": settled[0], "rss_last_kb": settled[-1], "rss_max_kb": max(k for _, k in rss),
        "running_after": gauge.get("whale_running_sequences"), "blocks_used_after": gauge.get("whale_cache_blocks_used"),
        "requests_total": gauge.get("whale_requests_total"), "cancelled_total": gauge.get("whale_requests_cancelled_total"),
    }
    with open(os.path.join(a.out, "soak.json"), "w") as f:
        json.dump(report, f, indent=1)
    growth = (report["rss_last_kb"] - report["rss_settled_first_kb"]) / max(report["rss_settled_first_kb"], 1)
    print(json.dumps({k: v for k, v in report.items() if k not in ("rss_kb", "failures")}))
    ok = not failures and health == 200 and code == 0 and growth < 0.10 \
        and report["running_after"] == 0 and report["blocks_used_after"] == 0
    print("soak:", "ok" if ok else "FAILED", f"(RSS {report['rss_settled_first_kb']} -> {report['rss_last_kb']} kB)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
