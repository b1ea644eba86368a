"""configure(), shutdown(), then configure() again (a notebook re-running its setup cell)."""

import memspan

memspan.configure(service_name="t")
with memspan.phase("one"):
    pass
memspan.shutdown()
memspan.shutdown()
with memspan.phase("after"):
    pass
memspan.configure(service_name="t2")
with memspan.phase("two"):
    pass
memspan.shutdown()
