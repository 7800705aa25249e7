"""Have a model review a document in the container and write review.md (payload: document)."""

from pyflue import FlueContext, create_agent

reviewer = create_agent(lambda ctx: {"model": "anthropic/claude-sonnet-4-6", "cwd": "/workspace"})


async def run(ctx: FlueContext) -> dict:
    harness = await ctx.init(reviewer)
    await harness.fs.write_file("document.md", ctx.payload["document"])

    session = await harness.session()
    await session.prompt("Review document.md and write your findings to review.md.")
    return {"review": await harness.fs.read_file("review.md")}
