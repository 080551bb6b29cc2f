"""A real MCP client (the official Python SDK) driving `kdnet mcp`.

Usage: mcp_client.py stdio KDNET_BIN ARG...   (the server is started over stdio with these args)
       mcp_client.py http URL                  (a server already listening)

It checks what an agent relies on and prints one JSON object with what it saw, for the Rust
test that started it to check against the simulated machines.
"""

import asyncio
import json
import sys

from jsonschema import Draft202012Validator
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client


def check(cond, what):
    if not cond:
        raise AssertionError(what)


async def call(s, name, args):
    r = await s.call_tool(name, args)
    return r


async def drive(s):
    seen = {}
    await s.initialize()
    tools = (await s.list_tools()).tools
    seen["tools"] = sorted(t.name for t in tools)
    schemas = {}
    for t in tools:
        Draft202012Validator.check_schema(t.input_schema)
        check(t.output_schema is not None, f"{t.name} has no output schema")
        Draft202012Validator.check_schema(t.output_schema)
        check(t.annotations is not None, f"{t.name} has no annotations")
        schemas[t.name] = t.output_schema
    seen["read_only"] = sorted(
        t.name for t in tools if t.annotations and t.annotations.read_only_hint
    )
    seen["destructive"] = sorted(
        t.name for t in tools if t.annotations and t.annotations.destructive_hint
    )

    def valid(name, r):
        check(not r.is_error, f"{name} failed: {r.content[0].text if r.content else r}")
        Draft202012Validator(schemas[name]).validate(r.structured_content)
        return r.structured_content

    targets = valid("targets", await call(s, "targets", {}))
    seen["targets"] = {t["name"]: t["state"] for t in targets["targets"]}

    hung = "hung"
    # The held locks, from the typed result.
    raw = await call(s, "run", {"target": hung, "command": "!locks", "timeout_ms": 120000})
    r = valid("run", raw)
    seen["locks_ok"] = r["results"][0]["ok"]
    seen["held_locks"] = r["results"][0]["result"]["held_locks"]
    seen["run_broke_in"] = r["broke_in"]
    seen["state_after_run"] = r["state"]["state"]
    seen["run_text"] = raw.content[0].text[:300]

    # A long result is stored and paged.
    r = valid("run", await call(s, "run", {"target": hung, "command": "!process 0 7", "timeout_ms": 120000}))
    stored = r["stored"]
    check(stored is not None, "!process 0 7 was not stored")
    check(r["results"][0]["result"] is None, "a stored run still carries its result")
    seen["stored_lines"] = stored["lines"]
    seen["stored_bytes"] = stored["bytes"]
    first = valid("output", await call(s, "output", {"id": stored["id"], "offset": 0, "limit": 50}))
    check(len(first["lines"]) == 50 and first["next_offset"] == 50, f"first page: {first['next_offset']}")
    pages = 1
    offset = first["next_offset"]
    total = len(first["lines"])
    while offset is not None:
        p = valid("output", await call(s, "output", {"id": stored["id"], "offset": offset, "limit": 2000}))
        total += len(p["lines"])
        offset = p["next_offset"]
        pages += 1
    check(total == stored["lines"], f"paged {total} of {stored['lines']} lines")
    seen["pages"] = pages
    threads = valid("output", await call(s, "output", {"id": stored["id"], "filter": "THREAD ", "limit": 2000}))
    check(all("thread " in l.lower() for l in threads["lines"]), "a filtered line without the filter")
    seen["thread_lines"] = threads["total_lines"]

    # Control is refused without --allow-control.
    r = await call(s, "break_in", {"target": hung})
    check(r.is_error, "break_in was not refused")
    seen["break_in_refused"] = r.content[0].text
    r = await call(s, "run", {"target": hung, "command": ".writemem /tmp/x 0 L10"})
    check(r.is_error, ".writemem was not refused")

    # A capture now, and its findings.
    r = valid("capture", await call(s, "capture", {"target": hung}))
    seen["bundle"] = r["bundle"]
    seen["pending_nbls"] = r["findings"].get("pending_nbls")
    seen["nbl_holders"] = r["findings"].get("nbl_holders")
    seen["summary"] = r["summary"]

    b = valid("bundles", await call(s, "bundles", {}))
    seen["bundles"] = [x["path"] for x in b["bundles"]]
    one = valid("bundle", await call(s, "bundle", {"bundle": r["bundle"]}))
    seen["bundle_findings_nbls"] = one["report"]["findings"].get("pending_nbls")
    check(one["text"] is not None and one["text"]["lines"] > 0, "no report.txt")

    # Bundles are resources too.
    res = (await s.list_resources()).resources
    seen["resources"] = [str(x.uri) for x in res]
    if res:
        body = (await s.read_resource(res[0].uri)).contents[0].text
        seen["resource_target"] = json.loads(body)["target"]

    ev = valid("events", await call(s, "events", {"cursor": 0, "limit": 1000}))
    seen["events"] = len(ev["events"])
    seen["event_states"] = sorted({e[1].get("state", "") for e in ev["events"]})
    # Nothing new after the cursor it gave.
    again = valid("events", await call(s, "events", {"cursor": ev["next_cursor"]}))
    check(all(e[0] > ev["next_cursor"] for e in again["events"]), "an event at or before the cursor")
    check(again["next_cursor"] >= ev["next_cursor"], "the cursor went back")
    numbers = [e[0] for e in ev["events"]]
    check(numbers == sorted(set(numbers)), "events out of order or repeated")

    # An unknown target is a tool error that names the known ones.
    r = await call(s, "run", {"target": "nobody", "command": "lm"})
    check(r.is_error and "known" in r.content[0].text, "unknown target")
    targets = valid("targets", await call(s, "targets", {}))
    seen["targets_after"] = {t["name"]: t["state"] for t in targets["targets"]}
    seen["builds"] = {t["name"]: t["build"] for t in targets["targets"]}
    return seen


async def main():
    mode = sys.argv[1]
    if mode == "stdio":
        params = StdioServerParameters(command=sys.argv[2], args=sys.argv[3:])
        async with stdio_client(params) as (r, w), ClientSession(r, w) as s:
            seen = await drive(s)
    else:
        async with streamable_http_client(sys.argv[2]) as (r, w), ClientSession(r, w) as s:
            seen = await drive(s)
    print(json.dumps(seen))


asyncio.run(main())
