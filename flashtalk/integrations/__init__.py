"""Voice-agent framework adapters, each behind its optional extra and imported only when asked for:

* `flashtalk.integrations.livekit` (`pip install 'flashtalk[livekit]'`): a LiveKit Agents `VideoGenerator`
  and the wiring for its in-process and remote-avatar-worker patterns;
* `flashtalk.integrations.pipecat` (`pip install 'flashtalk[pipecat]'`): a Pipecat frame processor.

Both sit on `flashtalk.integrations.avatar.AvatarStream` (framework-free: agent audio at any rate in, frames
with the audio that drove them out) over an engine from `flashtalk.integrations.engines`: `LocalEngine`
(a FlashTalk session in this process) or `RemoteEngine` (a FlashTalk server, through `flashtalk.client`).
"""
