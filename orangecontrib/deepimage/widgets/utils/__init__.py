"""Helpers shared by the add-on's widgets.

* :mod:`.trainingcurves`: live per-epoch training curves (loss and a score,
  training and validation) with the best epoch marked;
* :mod:`.masks`: class colours, mask overlays and a view that shows images
  with their masks side by side.
"""
