"""The paper's experiments in miniature, one module per experiment; each writes its numbers and figures under
docs/results/ and is run with ``python -m ldm_minimal.experiments.<name>``.

- ``ae_reconstruction``  first stages on shapes-32: quality against f (Tab. 8), loss ablation, dead VQ codes
"""
