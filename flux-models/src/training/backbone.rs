//! The frozen model inside the trained module: a burn `Module` with no parameters and an empty
//! record, so the optimizer never sees it and checkpoints hold none of its bytes, while the
//! learner can still move it between devices and to the inner backend for validation.

use burn::module::{
    AutodiffModule, Content, Devices, EmptyRecord, Module, ModuleDisplay, ModuleDisplayDefault,
    ModuleMapper, ModuleVisitor,
};
use burn::tensor::backend::{AutodiffBackend, Backend};

use crate::model::{FromInner, Model, ToDevice, ToInner};

/// The frozen backbone of router training.
#[derive(Debug, Clone)]
pub struct Backbone<B: Backend> {
    model: Model<B>,
}

impl<B: Backend> Backbone<B> {
    /// Wraps a loaded model.
    pub fn new(model: Model<B>) -> Self {
        Self { model }
    }

    /// The model.
    pub fn model(&self) -> &Model<B> {
        &self.model
    }
}

impl<B: Backend> Module<B> for Backbone<B> {
    type Record = EmptyRecord;

    fn collect_devices(&self, mut devices: Devices<B>) -> Devices<B> {
        let device = self.model.device().clone();
        if !devices.contains(&device) {
            devices.push(device);
        }
        devices
    }

    fn fork(self, device: &B::Device) -> Self {
        self.to_device(device)
    }

    fn to_device(self, device: &B::Device) -> Self {
        if self.model.device() == device {
            return self;
        }
        Self {
            model: self.model.map_backend(&ToDevice::<B>(device.clone())),
        }
    }

    fn visit<V: ModuleVisitor<B>>(&self, _visitor: &mut V) {}

    fn map<M: ModuleMapper<B>>(self, _mapper: &mut M) -> Self {
        self
    }

    fn load_record(self, _record: Self::Record) -> Self {
        self
    }

    fn into_record(self) -> Self::Record {
        EmptyRecord::new()
    }
}

impl<B: AutodiffBackend> AutodiffModule<B> for Backbone<B> {
    type InnerModule = Backbone<B::InnerBackend>;

    fn valid(&self) -> Self::InnerModule {
        Backbone {
            model: self.model.map_backend(&ToInner),
        }
    }

    fn from_inner(module: Self::InnerModule) -> Self {
        Backbone {
            model: module.model.map_backend(&FromInner),
        }
    }
}

impl<B: Backend> ModuleDisplayDefault for Backbone<B> {
    fn content(&self, content: Content) -> Option<Content> {
        let c = self.model.config();
        content
            .add_single(&format!(
                "frozen {} ({} layers, hidden {})",
                c.architecture.hf_class(),
                c.num_layers,
                c.hidden_size
            ))
            .optional()
    }
}

impl<B: Backend> ModuleDisplay for Backbone<B> {}
