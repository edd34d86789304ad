"""Helpers shared by the add-on's widgets.

* :mod:`.trainingcurves`: live per-epoch training curves (loss and a score,
  training and validation) with the best epoch marked;
* :mod:`.masks`: class colours, mask overlays and a view that shows images
  with their masks side by side;
* :mod:`.tasks`: Cancel (and Stop) buttons enabled only while a task runs;
* :mod:`.training`: training that Stop ends early, keeping the best model
  (the widget's and the worker's side);
* :mod:`.outputfolder`: the folder a widget writes its files to, and the
  controls that choose it;
* :mod:`.thumbnails`: thumbnails of a table's images, loaded lazily in
  worker threads;
* :mod:`.gallery`: a grid of thumbnails in optional titled groups, with
  captions, overlays and selection, and a list of its groups;
* :mod:`.embeddingmap`: images on a 2-D map (a dot each, thumbnails where
  there is room);
* :mod:`.silhouette`: bars of the mean silhouette per number of clusters;
* :mod:`.messages`: the full text of a widget's errors, wrapped, for
  narrow widgets whose status bar cuts it.
"""
