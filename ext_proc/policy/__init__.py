"""Policy: the platform team's YAML, validated once and compiled into fast lookups. Pure.

``schema`` is the YAML's shape (pydantic, strict), ``compile`` turns a validated document into
a :class:`~ext_proc.policy.compiled.CompiledPolicy`, the only form the per-request core reads.
Reading files and watching them for changes belongs to the server.
"""
