"""backend: the fleet server's side of the gateway, over hawkBit's DDI API.

The DDI wire client (``ddi``), the deployment ``runner`` that turns DDI actions into
installs and feedback one phase at a time, the ``pipeline_adapter`` that puts the install
pipeline behind the runner's seam, and combined ``health`` (gateway and every target),
which is reported to the server as ``configData`` and shown by ``ferry status``.

May use: ``install``, ``boot``, the core and ``ferry.proxy`` (to inspect targets); never
``service`` or ``cli``.
"""
