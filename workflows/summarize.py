"""Summarize a text with a model (payload: text, audience)."""

from pyflue import FlueContext, create_agent

agent = create_agent(lambda ctx: {"model": "anthropic/claude-haiku-4-5"})


async def run(ctx: FlueContext) -> dict:
    ctx.log.info("summarization started", audience=ctx.payload.get("audience", "general"))
    harness = await ctx.init(agent)
    session = await harness.session()
    response = await session.prompt(f"Summarize this text:\n\n{ctx.payload['text']}")
    return {"summary": response.text}
