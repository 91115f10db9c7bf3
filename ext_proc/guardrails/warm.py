"""Imported by the workers' zygote when the policy scores prompt injection: the scorer's
Hyperscan databases (about 40 MB, over a second of CPU to compile) are built once there, before
any worker forks, and every worker shares their pages instead of compiling its own copy.
"""

from ext_proc.guardrails import injection

injection.warm()
