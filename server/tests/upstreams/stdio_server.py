"""A small stdio MCP server for the gateway's router tests: newline-delimited JSON-RPC
on stdin/stdout, written by hand (no SDK) so every behaviour a relay must survive is
under the test's control: progress, a sampling request to the client, a crash, a line
of garbage, a call that never answers."""

import json
import os
import sys
import time

TOOLS = [
    {"name": "echo", "annotations": {"readOnlyHint": True}},
    {"name": "add", "annotations": {"readOnlyHint": False}},
    {"name": "secret-admin", "annotations": {"readOnlyHint": True}},
    {"name": "slow", "annotations": {"readOnlyHint": True}},
    {"name": "sample", "annotations": {"readOnlyHint": True}},
    {"name": "crash", "annotations": {"readOnlyHint": True}},
    {"name": "garbage", "annotations": {"readOnlyHint": True}},
    {"name": "hang", "annotations": {"readOnlyHint": True}},
    {"name": "env", "annotations": {"readOnlyHint": True}},
    {"name": "flood", "annotations": {"readOnlyHint": True}},
    {"name": "abandon", "annotations": {"readOnlyHint": True}},
]
for tool in TOOLS:
    tool["description"] = "test tool " + tool["name"]
    tool["inputSchema"] = {"type": "object"}

pending = {}
next_id = [1000]


def send(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def text(value):
    return {"content": [{"type": "text", "text": value}], "isError": False}


def read():
    line = sys.stdin.readline()
    if not line:
        sys.exit(0)
    return json.loads(line)


def call(request):
    params = request.get("params", {})
    name = params.get("name")
    args = params.get("arguments") or {}
    token = (params.get("_meta") or {}).get("progressToken")
    if name == "echo":
        return text("echo: " + str(args.get("message", "")))
    if name == "add":
        return text(str(args.get("a", 0) + args.get("b", 0)))
    if name == "secret-admin":
        return text("the secret")
    if name == "slow":
        # `delay` seconds before each step: longer in all than the gateway's timeout,
        # each step well within it.
        for step in (1, 2, 3):
            time.sleep(float(args.get("delay", 0)))
            if token is not None:
                send({"jsonrpc": "2.0", "method": "notifications/progress",
                      "params": {"progressToken": token, "progress": step, "total": 3}})
        return text("slow done")
    if name == "sample":
        next_id[0] += 1
        asked = next_id[0]
        send({"jsonrpc": "2.0", "id": asked, "method": "sampling/createMessage",
              "params": {"messages": [{"role": "user", "content": {"type": "text", "text": "hi"}}],
                         "maxTokens": 10}})
        while True:
            message = read()
            if message.get("id") == asked and "method" not in message:
                result = message.get("result") or {}
                content = result.get("content") or {}
                return text("sampled: " + str(content.get("text", message.get("error"))))
            handle(message)
    if name == "abandon":
        # Asks the client, then answers the call without waiting or saying so, as a
        # tool that gave up (the Python SDK does not cancel its own requests).
        next_id[0] += 1
        send({"jsonrpc": "2.0", "id": next_id[0], "method": "sampling/createMessage",
              "params": {"messages": [{"role": "user", "content": {"type": "text", "text": "hi"}}],
                         "maxTokens": 10}})
        time.sleep(0.3)
        return text("abandoned")
    if name == "flood":
        # `count` sampling requests at once, none waited for; then the answers until
        # `refusals` of them are errors: those the gateway refused at once.
        asked = set()
        for _ in range(int(args.get("count", 0))):
            next_id[0] += 1
            asked.add(next_id[0])
            send({"jsonrpc": "2.0", "id": next_id[0], "method": "sampling/createMessage",
                  "params": {"messages": [{"role": "user",
                                           "content": {"type": "text", "text": "hi"}}],
                             "maxTokens": 10}})
        reasons = []
        while len(reasons) < int(args.get("refusals", 0)):
            message = read()
            if message.get("id") in asked and "method" not in message:
                error = message.get("error") or {}
                reasons.append(str((error.get("data") or {}).get("reason")))
            else:
                handle(message)
        # Gatehouse relays each request to the client from a task of its own; an
        # answer written at once could overtake some of them, which would then find
        # no call in flight to go with. A server waits for the answers it asked for;
        # this one does not, so it leaves them a moment.
        time.sleep(0.5)
        return text("refused " + " ".join(reasons))
    if name == "crash":
        sys.stderr.write("stdio test server: crashing on purpose\n")
        sys.stderr.flush()
        os._exit(3)
    if name == "garbage":
        sys.stdout.write("this line is not JSON\n")
        sys.stdout.flush()
        return text("after garbage")
    if name == "hang":
        return None
    if name == "env":
        return text(" ".join(sorted(os.environ)))
    return {"error": {"code": -32602, "message": "Unknown tool: " + str(name)}}


def handle(message):
    method = message.get("method")
    if "id" not in message or method is None:
        # A notification, or an answer nobody here waits for any more.
        return
    if method == "initialize":
        send({"jsonrpc": "2.0", "id": message["id"], "result": {
            "protocolVersion": message["params"]["protocolVersion"],
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "stdio-test-server", "version": "1.0"},
            "instructions": "a test server"}})
    elif method == "tools/list":
        send({"jsonrpc": "2.0", "id": message["id"], "result": {"tools": TOOLS}})
    elif method == "tools/call":
        result = call(message)
        if result is None:
            return
        if "error" in result:
            send({"jsonrpc": "2.0", "id": message["id"], "error": result["error"]})
        else:
            send({"jsonrpc": "2.0", "id": message["id"], "result": result})
    elif method == "ping":
        send({"jsonrpc": "2.0", "id": message["id"], "result": {}})
    else:
        send({"jsonrpc": "2.0", "id": message["id"],
              "error": {"code": -32601, "message": "Method not found: " + str(method)}})


sys.stderr.write("stdio test server ready\n")
sys.stderr.flush()
while True:
    handle(read())
