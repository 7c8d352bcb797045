"""Rollouts: ReAct prompting and parsing (:mod:`.react`) and the concurrent, resumable engine (:mod:`.engine`)."""
