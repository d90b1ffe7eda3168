/**
 * The layer tar engine: pack a tree or a set of changes into a deterministic layer blob,
 * apply a layer onto a directory with the OCI whiteout rules, and list what changed.
 * @module
 */
export { packDirectory, type PackOptions, type PackResult } from './pack';
export { applyLayer, type ApplyOptions, type ApplyResult } from './apply';
export { diffOverlayUpper, diffTrees, packChanges, type Change } from './diff';
export { LayerError, type LayerErrorCode, type LayerErrorOptions } from './errors';
