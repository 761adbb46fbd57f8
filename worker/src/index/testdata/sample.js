import fs from "fs";

export const VERSION = "1.0";
const helper = (x) => x * 2;
let mutable = 1;
var legacy = function () {};

function main() {
  const local = 5;
  const inner = () => local;
  return inner();
}

function* gen() {}

export default class Widget extends Base {
  #secret = 1;
  constructor() {
    super();
  }
  get size() {
    return 1;
  }
  static create() {
    return new Widget();
  }
  #hidden() {}
}

const Thing = class Named {
  run() {}
};

const obj = {
  method() {},
};

export const [first, , second = fallback, ...others] = list;
const { alpha, beta: renamed, gamma = 1, delta: { epsilon } } = config;
