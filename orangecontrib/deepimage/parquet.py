"""Orange's reader for Parquet files, such as ``deepimage embed``'s output.

Defining :class:`ParquetImageReader` registers it with Orange (``FileFormat``
subclasses register themselves), so the package imports this module: the
File widget then lists "Parquet" and opens ``.parquet`` files. pyarrow is
imported only when a file is read.

A file written by ``deepimage embed`` or ``predict`` opens as the table Deep
Embedding would give: the path as an image column, the class (a folder's
sub-folder) as the target, the vector as hidden features ``n0``, ``n1``…
(or the class probabilities), hashes, predictions and masks as metas.
Other Parquet files open column by column: numbers as features, text and
the rest as metas, lists of numbers of one length as one feature each.
"""
import json
import os

import numpy as np

from Orange.data import (
    ContinuousVariable, DiscreteVariable, Domain, StringVariable, Table)
from Orange.data.io import FileFormat
from Orange.data.util import get_unique_names

__all__ = ["ParquetImageReader", "read_parquet"]

METADATA_KEY = b"deepimage"


class ParquetImageReader(FileFormat):
    """Reader for Apache Parquet files.

    (Orange registers readers by class name: this one is named so as not
    to replace a Parquet reader of Orange's own or another add-on's.)
    """
    EXTENSIONS = (".parquet",)
    DESCRIPTION = "Parquet"
    SUPPORT_COMPRESSED = False
    SUPPORT_SPARSE_DATA = False

    def read(self):
        table = read_parquet(self.filename)
        self.set_table_metadata(self.filename, table)
        return table


# Orange keeps the extension -> reader map in a cache; a reader defined after
# it was first built (an add-on imported late) must not be missed.
_cached_map = getattr(FileFormat, "_ext_to_attr_if_attr2", None)
if hasattr(_cached_map, "cache_clear"):
    _cached_map.cache_clear()


def _strings(column) -> np.ndarray:
    values = column.to_pylist()
    return np.array(["" if v is None else str(v) for v in values],
                    dtype=object)


def _matrix(column) -> np.ndarray:
    """A fixed-size-list column as a float matrix; NaN rows for nulls."""
    column = column.combine_chunks() if hasattr(column, "combine_chunks") \
        else column
    size = column.type.list_size
    if len(column) == 0:
        return np.zeros((0, size))
    values = column.flatten() if column.null_count == 0 else None
    if values is not None and len(values) == len(column) * size:
        return values.to_numpy(zero_copy_only=False).astype(float) \
            .reshape(len(column), size)
    rows = [np.full(size, np.nan) if v is None else np.asarray(v, float)
            for v in column.to_pylist()]
    return np.vstack(rows) if rows else np.zeros((0, size))


def _is_number(type_) -> bool:
    import pyarrow as pa
    return pa.types.is_integer(type_) or pa.types.is_floating(type_) \
        or pa.types.is_boolean(type_)


def read_parquet(path: str) -> Table:
    """Read a Parquet file into an Orange table (see the module)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    arrow = pq.read_table(path)
    meta = {}
    if arrow.schema.metadata and METADATA_KEY in arrow.schema.metadata:
        meta = json.loads(arrow.schema.metadata[METADATA_KEY])
    n = arrow.num_rows
    attributes, attr_cols = [], []
    class_vars, class_cols = [], []
    metas, meta_cols = [], []
    taken = []

    def unique(name):
        name = get_unique_names(taken, name)
        taken.append(name)
        return name

    vector = meta.get("vector")
    for name in arrow.column_names:
        column = arrow[name]
        type_ = column.type
        if name == "path" and meta:
            var = StringVariable(unique("image"))
            var.attributes.update({"type": "image", "origin": ""})
            metas.append(var)
            meta_cols.append(_strings(column))
        elif name == "class" and meta:
            var, codes = _categorical(column, meta.get("class_values"),
                                      unique("category"))
            class_vars.append(var)
            class_cols.append(codes)
        elif name == "predicted" and meta:
            var, codes = _categorical(column, meta.get("class_names"),
                                      unique("predicted"))
            metas.append(var)
            meta_cols.append(codes)
        elif name == "mask" and meta:
            var = StringVariable(unique("mask"))
            var.attributes.update({
                "type": "image", "mask": "class",
                "origin": meta.get("masks", os.path.join(
                    os.path.dirname(os.path.abspath(path)), "masks")),
                "classes": ",".join(meta.get("class_names", []))})
            metas.append(var)
            meta_cols.append(_strings(column))
        elif pa.types.is_fixed_size_list(type_) \
                and _is_number(type_.value_type):
            names = meta.get("vector_names") if name == vector else None
            size = type_.list_size
            if not names or len(names) != size:
                names = [f"{name}{i}" for i in range(size)]
            hidden = meta.get("kind") == "embed" and name == vector
            for var_name in names:
                var = ContinuousVariable(unique(var_name))
                if hidden:
                    var.attributes["hidden"] = True
                    var.attributes["deepimage-model"] = meta["model"]
                    if meta.get("weights"):
                        var.attributes["deepimage-weights"] = meta["weights"]
                attributes.append(var)
            attr_cols.append(_matrix(column))
        elif _is_number(type_):
            attributes.append(ContinuousVariable(unique(name)))
            attr_cols.append(column.to_numpy(zero_copy_only=False)
                             .astype(float)[:, None])
        elif pa.types.is_dictionary(type_):
            values = [str(v) for v in column.combine_chunks().dictionary
                      .to_pylist()]
            var = DiscreteVariable(unique(name), values=values)
            index = {v: i for i, v in enumerate(values)}
            metas.append(var)
            meta_cols.append(np.array(
                [np.nan if v is None else index[str(v)]
                 for v in column.to_pylist()], dtype=float))
        else:
            metas.append(StringVariable(unique(name)))
            meta_cols.append(_strings(column))

    def stack(columns, dtype=float):
        if not columns:
            return np.zeros((n, 0), dtype=dtype)
        return np.column_stack(
            [c if c.ndim == 2 else c[:, None] for c in columns]
        ).astype(dtype)

    X = stack(attr_cols)
    Y = stack(class_cols)
    M = stack(meta_cols, object)
    domain = Domain(attributes, class_vars, metas)
    table = Table.from_numpy(domain, X, Y if class_vars else None, M)
    table.name = os.path.splitext(os.path.basename(path))[0]
    return table


def _categorical(column, values, name):
    """A discrete variable `name` with `values` (or the column's own, sorted)
    and the column's values as codes (NaN for missing or empty)."""
    labels = column.to_pylist()
    values = values or sorted({v for v in labels if v})
    index = {v: i for i, v in enumerate(values)}
    codes = np.array([index.get(v, np.nan) if v else np.nan for v in labels],
                     dtype=float)
    return DiscreteVariable(name, values=values), codes
