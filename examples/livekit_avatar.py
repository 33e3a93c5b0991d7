"""A LiveKit Agents voice agent with a FlashTalk avatar (`pip install 'flashtalk[livekit]'`).

Needs your LiveKit project (LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET) and the STT / LLM / TTS you
pick below (LiveKit Inference model strings here; any livekit-agents plugins work).

In process (the agent's worker renders the avatar and publishes its tracks itself):

    python examples/livekit_avatar.py dev
    FLASHTALK_URL=ws://gpu-box:8000/ws FLASHTALK_TOKEN=T python examples/livekit_avatar.py dev   # frames from a
                                                                                # FlashTalk server instead

Remote avatar worker (the agent sends its audio over a data stream to a separate avatar participant):

    python examples/livekit_avatar.py avatar-worker ROOM      # joins ROOM as "flashtalk-avatar"
    FLASHTALK_AVATAR=worker python examples/livekit_avatar.py dev

FLASHTALK_PORTRAIT picks the face (default: the bundled portrait).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from livekit import api, rtc
from livekit.agents import Agent, AgentServer, AgentSession, JobContext, cli

from flashtalk.integrations.livekit import (
    FlashTalkVideoGenerator,
    avatar_options,
    run_avatar_worker,
    send_agent_audio_to_avatar,
    start_in_process_avatar,
)

AVATAR_IDENTITY = "flashtalk-avatar"
ASSETS = Path(__file__).resolve().parents[1] / "flashtalk" / "assets"
PORTRAIT = os.environ.get("FLASHTALK_PORTRAIT") or str(ASSETS / "portrait.jpg")
OPTIONS = avatar_options(width=512, height=512, audio_sample_rate=48000)


def video_generator() -> FlashTalkVideoGenerator:
    url = os.environ.get("FLASHTALK_URL")
    if url:
        return FlashTalkVideoGenerator.remote(url, OPTIONS, token=os.environ.get("FLASHTALK_TOKEN"), portrait=PORTRAIT)
    return FlashTalkVideoGenerator.local(PORTRAIT, OPTIONS)  # the preview; pass backend= for the network


server = AgentServer()


@server.rtc_session()
async def entrypoint(ctx: JobContext) -> None:
    await ctx.connect()
    session = AgentSession(stt="deepgram/nova-3", llm="openai/gpt-4.1-mini", tts="cartesia/sonic-2")
    runner = None
    if os.environ.get("FLASHTALK_AVATAR") == "worker":
        send_agent_audio_to_avatar(session, ctx.room, AVATAR_IDENTITY)  # the worker publishes the tracks
    else:
        gen = video_generator()
        runner = await start_in_process_avatar(session, ctx.room, gen)
        ctx.add_shutdown_callback(runner.aclose)
        ctx.add_shutdown_callback(gen.aclose)
    await session.start(agent=Agent(instructions="You are a friendly assistant. Keep answers short."), room=ctx.room)
    await session.generate_reply(instructions="Greet the user.")


async def avatar_worker(room_name: str) -> None:
    """The remote pattern's avatar participant: receives the agent's audio, publishes synced audio + video."""
    token = (
        api.AccessToken()
        .with_identity(AVATAR_IDENTITY)
        .with_name("FlashTalk avatar")
        .with_grants(api.VideoGrants(room_join=True, room=room_name))
        .to_jwt()
    )
    room = rtc.Room()
    await room.connect(os.environ["LIVEKIT_URL"], token)
    gen = video_generator()
    runner = await run_avatar_worker(room, gen)
    try:
        await runner.wait_for_complete()
    finally:
        await runner.aclose()
        await gen.aclose()
        await room.disconnect()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "avatar-worker":
        asyncio.run(avatar_worker(sys.argv[2]))
    else:
        cli.run_app(server)
