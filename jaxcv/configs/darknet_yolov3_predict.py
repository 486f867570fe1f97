"""Darknet's YOLOv3 (`yolov3.cfg` + `yolov3.weights`, COCO's 80 classes) for prediction on images and video, as the
OpenCV DNN notebook runs it: 416 px, RGB in [0, 1], boxes kept above a class confidence of 0.5, NMS at IoU 0.4, each
drawn with a `class: score` caption. Convert once, then predict (from the folder holding yolov3.cfg):

    python -m jaxcv.convert --arch darknet --cfg yolov3.cfg --weights yolov3.weights --out weights/yolov3
    python -m jaxcv.main --config=configs/darknet_yolov3_predict.py --workdir=runs/yolov3 --mode=predict \
      --config.predict.inputs=street.jpg,clip.mp4

writes runs/yolov3/predict/street_det.png, detections.json (COCO results with class names), clip_pred.mp4 and
clip.jsonl. Another cfg or weights folder: `--config.model.cfg=yolov3-tiny.cfg --config.init_from=weights/tiny`;
other classes: `--config.data.class_names=obj.names` (darknet's one name per line, or "a,b,c"). No dataset is
read (`data.name = "class_names"`). The image is letterboxed (aspect kept, grey 0.5 padding, darknet's own
`letterbox_image` colour) where the notebook's `blobFromImage(crop=False)` stretches it to 416 x 416, so boxes
can differ slightly from the notebook's. The thresholds are the notebook's (OpenCV's own in-layer `thresh` of
0.2 is below them, and OpenCV 4.14 runs no NMS in the layer for the public cfgs: ../shared/fixtures/yolo/README.md);
its NMS is `cv2.dnn.NMSBoxes` over all classes at once, the `yolov3` head's is per class.

`:smoke` is the same pipeline on the built-in yolov3-tiny cfg and shapes data (random weights, for tests).
"""

from jaxcv.config import detection_config, parse_config_arg, shapes_data, smoke


def get_config(arg: str | None = None):
    args = parse_config_arg(arg)
    c = detection_config(head="yolov3")
    c.model.cfg = "yolov3.cfg"  # the cfg given to `jaxcv.convert --cfg`
    c.init_from = "weights/yolov3"  # its `--out`
    c.data.name = "class_names"
    c.data.class_names = "coco"  # COCO's 80 names in darknet's coco.names order, with COCO category ids
    c.data.image_size = 416
    c.data.max_boxes = 100
    c.preprocess.normalize = "unit"  # darknet's input: RGB / 255
    c.preprocess.pad_value = 127.5  # darknet's letterbox grey (0.5)
    c.postprocess.score_thresh = 0.5  # the notebook's confidence threshold
    c.postprocess.nms_thresh = 0.4  # the notebook's NMS threshold
    c.predict.score_thresh = 0.5
    c.predict.batch_size = 1  # images one at a time, as the notebook; raise it for video
    if "smoke" in args:
        c.model.cfg = "yolov3-tiny"
        c.init_from = ""
        del c.data["class_names"]
        shapes_data(c)
        smoke(c, **{"model.width": 0.25, "data.image_size": 64})
    c.lock()
    return c
