"""AgentInstruct data (Zeng et al., 2023, section 2): filter, decontaminate, read/write the layouts, mix general data.

=====================  =====================================================================================
module                 holds
=====================  =====================================================================================
``example``            :class:`~agenttuning.data.example.Example`, the one in-memory training example
``rows``               rows of JSONL / JSON-list / parquet files, located for errors; atomic writers
``formats``            the AgentInstruct, ShareGPT and OpenAI-messages layouts, read and written
``filter``             trajectory filtering by reward, format and length (section 2.1), per-environment stats
``decontam``           duplicates and overlap with every registered test split (10-gram check)
``mix``                hybrid instruction mixing with ratio eta (section 2.2): the trainer's resumable sampler
``outputs``            stage output folders: refused when they must not be replaced, swapped in whole
=====================  =====================================================================================

The stages built on these (filter, decontaminate, mix, prepare: config in, result out, one manifest) live in
:mod:`agenttuning.stages`. Nothing heavy is imported here; import the submodule you need.
"""
