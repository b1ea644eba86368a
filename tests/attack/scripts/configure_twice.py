"""configure(), shutdown(), then configure() again (a notebook re-running its setup cell)."""

import memspan
memspan.configure(service_name="t")
with memspan.phase("one"): pass
print("sd1", memspan.shutdown()); print("sd2", memspan.shutdown())
with memspan.phase("after"): pass
print("after ok")
memspan.configure(service_name="t2")
with memspan.phase("two"): pass
memspan.shutdown()
