"""A small MCP server written the way people write them: with the official Python SDK's
high-level server (FastMCP, called `MCPServer` since mcp 2.x), over stdio.

The end-to-end suite puts it behind Gatehouse's gateway (`/mcp/notes` in
tests/gateway.spec.ts). Its tools cover what the gateway decides on: a read-only tool
(`readOnlyHint`), a tool without hints (so it needs the write scope), a tool the
gateway's config denies, and one that asks the client a question (elicitation) and
reports progress while it waits.
"""

from pydantic import BaseModel

from mcp.server.mcpserver import Context, MCPServer
from mcp.types import ToolAnnotations

server = MCPServer("notes", version="1.0.0")
notes: list[str] = []


@server.tool(annotations=ToolAnnotations(readOnlyHint=True))
def list_notes() -> str:
    """The notes written so far, one a line."""
    return "\n".join(notes) if notes else "(no notes)"


@server.tool()
def add_note(text: str) -> str:
    """Adds a note."""
    notes.append(text)
    return f"added note {len(notes)}: {text}"


@server.tool(annotations=ToolAnnotations(destructiveHint=True))
def erase_notes() -> str:
    """Erases every note (the gateway's config denies it)."""
    notes.clear()
    return "erased"


class Title(BaseModel):
    title: str


@server.tool()
async def add_titled_note(text: str, ctx: Context) -> str:
    """Asks the client for a title (elicitation), then adds the note."""
    await ctx.report_progress(1, 2, "asking for a title")
    answer = await ctx.elicit("What is the note's title?", Title)
    if answer.action != "accept":
        return f"no title: {answer.action}"
    notes.append(f"{answer.data.title}: {text}")
    await ctx.report_progress(2, 2, "added")
    return f"added note {len(notes)} titled {answer.data.title!r}"


if __name__ == "__main__":
    server.run("stdio")
