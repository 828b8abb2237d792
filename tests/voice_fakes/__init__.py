"""Local servers speaking the wire protocols of the voice providers Parley uses (LiveKit's Twirp
API, Deepgram's streaming websocket, ElevenLabs' TTS), for their real SDKs to talk to in tests."""
