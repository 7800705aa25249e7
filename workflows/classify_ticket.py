"""Classify a support ticket into a validated priority and summary (payload: ticket)."""

from pydantic import BaseModel

from pyflue import FlueContext, create_agent

triage = create_agent(lambda ctx: {"model": "anthropic/claude-sonnet-4-6"})


class Classification(BaseModel):
    priority: str
    summary: str


async def run(ctx: FlueContext) -> dict:
    harness = await ctx.init(triage)
    session = await harness.session()
    result = await session.prompt(ctx.payload["ticket"], result=Classification)
    return result.model_dump()
