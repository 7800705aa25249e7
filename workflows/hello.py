"""The smallest workflow: greet someone from a fresh container."""

from pyflue import FlueContext, create_agent

agent = create_agent(lambda ctx: {"cwd": "/workspace"})


async def run(ctx: FlueContext) -> dict:
    name = ctx.payload.get("name", "world")
    ctx.log.info("greeting", name=name)
    harness = await ctx.init(agent)
    # Data goes in through the environment, never pasted into the command line.
    result = await harness.shell('echo "hello, $NAME from $(hostname)"', env={"NAME": str(name)})
    return {"greeting": result["stdout"].strip()}
