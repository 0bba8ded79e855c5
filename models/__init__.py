"""The network behind the encoder. Import each name from its module: :mod:`models.e2net` (the
assembly and its trainable-only state dict), :mod:`models.heads` (our decoder),
:mod:`models.reference` (the published LFSM / CFZM / CCM decoder), :mod:`models.linear` (the
linear-probe baseline), :mod:`models.losses` and :mod:`models.blocks`. ``build.py`` assembles them."""
