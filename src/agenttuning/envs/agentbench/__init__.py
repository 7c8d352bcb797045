"""AgentBench's own task files, imported and run offline (AgentBench runs them on MySQL and Docker).

:mod:`.db`: the ``agentbench_db`` environment, AgentBench's DB tasks on SQLite (:mod:`.db_dialect` builds the
tables and translates MySQL's SQL, :mod:`.db_grading` compares answers as AgentBench does, :mod:`.db_sample` is
the built-in sample). :mod:`.os_tasks`: the ``agentbench_os`` environment, AgentBench's OS tasks in the ``os``
environment's bubblewrap sandbox. This package imports no environment module at import time; the entry points are
``agenttuning.envs.agentbench.db:definition`` and ``agenttuning.envs.agentbench.os_tasks:definition``.
"""
