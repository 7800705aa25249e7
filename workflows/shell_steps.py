"""Run untrusted shell steps from the payload in a fresh, hardened container.

Payload: {"steps": ["echo hi", ...], "timeout": 60, "stop_on_failure": false,
          "files": {"path": "content"}}
Result: {"ok": bool, "steps": [{"command", "exit_code", "stdout", "stderr", "timed_out",
         "duration_ms"}]}
"""

from pyflue import FlueContext, create_agent

sandbox = create_agent(lambda ctx: {"cwd": "/workspace"})


async def run(ctx: FlueContext) -> dict:
    steps = ctx.payload.get("steps")
    if not isinstance(steps, list) or not all(isinstance(s, str) and s.strip() for s in steps):
        raise ValueError('payload needs "steps": a list of non-empty shell command strings')
    timeout = float(ctx.payload.get("timeout", 60))
    stop_on_failure = bool(ctx.payload.get("stop_on_failure", False))

    harness = await ctx.init(sandbox)
    for path, content in (ctx.payload.get("files") or {}).items():
        await harness.fs.write_file(path, content)

    results = []
    for number, command in enumerate(steps, start=1):
        ctx.log.info("step", number=number, command=command)
        result = await harness.shell(command, timeout=timeout)
        results.append({"command": command, **result})
        if result["exit_code"] != 0 and stop_on_failure:
            ctx.log.warn("stopping after a failed step", number=number)
            break
    return {"ok": all(r["exit_code"] == 0 for r in results), "steps": results}
