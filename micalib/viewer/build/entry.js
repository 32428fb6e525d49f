// Entry of the classic-script bundle of three.js (build.sh): the parts viewer.js uses, as window.THREE.
import {
  AnimationMixer, Box3, Color, DirectionalLight, DoubleSide, HemisphereLight, LoopOnce, Matrix4, MeshBasicMaterial,
  MeshStandardMaterial, PerspectiveCamera, REVISION, Scene, Vector3, WebGLRenderer,
} from "three";
import { GLTFLoader } from "three/examples/jsm/loaders/GLTFLoader.js";
import { OrbitControls } from "three/examples/jsm/controls/OrbitControls.js";

window.THREE = {
  AnimationMixer, Box3, Color, DirectionalLight, DoubleSide, HemisphereLight, LoopOnce, Matrix4, MeshBasicMaterial,
  MeshStandardMaterial, PerspectiveCamera, REVISION, Scene, Vector3, WebGLRenderer, GLTFLoader, OrbitControls,
};
