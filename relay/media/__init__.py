"""Codec-level pieces that the agent and the relay both compose: no I/O, no asyncio policy.

``h264`` reads Annex-B access units; ``frames`` is the unit both sides pass around; ``timeline``
keeps 90 kHz pts going forward; ``gop`` keeps the current GOP for a consumer that joins late;
``gop_queue`` is a bounded queue that drops whole GOPs for one that falls behind; ``fmp4`` fragments
a stream into MP4; ``pipelines`` turns a source's packets into frames (passed through or re-encoded).
"""
