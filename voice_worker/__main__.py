"""``python -m voice_worker``: the LiveKit Agents worker (``voice_worker.worker``)."""

from voice_worker.worker import main

main()
