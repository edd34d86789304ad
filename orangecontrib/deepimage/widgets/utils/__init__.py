"""Helpers shared by the add-on's widgets.

* :mod:`.trainingcurves`: live per-epoch training curves (loss and a score,
  training and validation) with the best epoch marked;
* :mod:`.masks`: class colours, mask overlays and a view that shows images
  with their masks side by side;
* :mod:`.tasks`: Cancel (and Stop) buttons enabled only while a task runs;
* :mod:`.training`: training that Stop ends early, keeping the best model
  (the widget's and the worker's side);
* :mod:`.outputfolder`: the folder a widget writes its files to, and the
  controls that choose it.
"""
