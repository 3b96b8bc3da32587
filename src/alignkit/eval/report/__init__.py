"""Reports: one block model rendered to HTML and Markdown (``blocks``), every figure (``figures``), what a run
directory holds (``runs``), the page of ``alignkit report`` over runs (``page``) and the report a recipe writes
of its run (``run_summary``)."""
