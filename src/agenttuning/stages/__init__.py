"""The data stages as one story each: a pydantic config in, files out, a frozen result that is the manifest's body.

=================  ==================================================================================  ==============
module             what it does                                                                        paper
=================  ==================================================================================  ==============
``filter``         trajectories -> the ones worth training on (reward, finished, parsable, length)     section 2.1
``decontaminate``  -> no duplicates, no overlap with any test task; the AgentInstruct layout            section 2.1
``prepare``        examples -> token ids and loss labels, fitted to max_len, packed                     section 2.2
``mix``            what the eta-mixture of the prepared sources holds (the trainer draws it)           section 2.2
=================  ==================================================================================  ==============

Each module has ``run(config, inputs..., out) -> Result``. The command of the same name (``agenttuning filter``, ...)
and the pipeline's stage both call it, so both write byte-identical files from the same inputs. Every stage writes
into a fresh folder swapped in whole (:mod:`.folder`) and its manifest last (:mod:`.manifest`, the one writer).
The library functions they are made of (filtering, decontamination, rendering, packing, the sampler) live in
:mod:`agenttuning.data` and :mod:`agenttuning.tokens`; rollout, training and evaluation are stages whose ``run`` is
their package's main function (``rollout.engine.rollout``, ``train.trainer.train``, ``eval.agent.evaluate_agent``).
"""
